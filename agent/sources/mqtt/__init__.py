"""MQTT source (aiomqtt over paho-mqtt)."""
