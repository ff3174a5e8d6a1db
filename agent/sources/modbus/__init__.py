"""Modbus TCP/RTU source (pymodbus)."""
