"""robustdeploy: does my image classifier stay accurate and robust once it is deployed?"""

__version__ = "0.1.0"
