"""The device side: registrar, keepalive and offline detection, MESSAGE routing."""
