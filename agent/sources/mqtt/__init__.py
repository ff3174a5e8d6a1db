"""MQTT source (paho-mqtt driven by the asyncio loop; see link.py for why not aiomqtt)."""
