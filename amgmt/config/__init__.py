"""Settings: layering (flags > MGMT_* environment > config file > defaults), validation, the config file.

Owns every setting's name, default and parser; must not open the network, the database or any entry."""
