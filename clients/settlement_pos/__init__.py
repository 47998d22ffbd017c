"""POS client library and the ``settlement-pos`` command of the settlement core."""

from .client import PosClient, basket, error_details

__all__ = ["PosClient", "basket", "error_details"]
