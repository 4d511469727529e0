"""wherewhat: visual representations that know *what* is *where*.

Four methods on one core: SSDIR, WorldComp2D, LZU and Spatial Prediction. See README.md.
"""

__version__ = "0.1.0"
