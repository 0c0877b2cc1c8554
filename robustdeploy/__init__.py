"""robustdeploy: does my image classifier stay accurate and robust once it is deployed?"""

from robustdeploy.version import __version__

__all__ = ["__version__", "bundle_from_module"]


def __getattr__(name: str):
    """`robustdeploy.bundle_from_module`, imported on first use so `import robustdeploy` stays light."""
    if name == "bundle_from_module":
        from robustdeploy.importer import bundle_from_module

        return bundle_from_module
    raise AttributeError(f"module 'robustdeploy' has no attribute {name!r}")
