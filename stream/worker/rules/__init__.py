"""Rule audiences (CEL over the features) and the playbook of actions, with the YAML they are read
from.
"""
