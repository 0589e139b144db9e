"""readl: reasoning-driven industrial anomaly detection and localization (ReAL + CGRO)."""

__version__ = "0.1.0"
