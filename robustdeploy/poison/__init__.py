"""Training-data poisoning (seed 000): a perturbation generator trained against surrogate backbones, and the
targeted clean-label attacks Convex Polytope and Feature Collision; poison sets in one stored format.

Submodules are imported by name (`robustdeploy.poison.generate`, ...): the training recipe reads poison sets, and
the generator trains surrogates with that recipe.
"""
