"""prodsmart-edge: a shop-floor machine edge agent that feeds Prodsmart."""

__version__ = "0.1.0"
