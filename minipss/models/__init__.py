"""One file per decoder family; each reads top to bottom and uses minipss/layers.py."""
