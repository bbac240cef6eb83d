"""A faithful local Google: OAuth 2.0, Calendar API v3 and push notifications, over real HTTP.

It stands for Google, so it imports nothing from the rest of calsync.
"""

from .emulator import ApiRequest, Emulator, client_config
from .errors import ApiError
from .push import PushRecord

__all__ = ["ApiError", "ApiRequest", "Emulator", "PushRecord", "client_config"]
