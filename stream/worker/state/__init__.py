"""The users' records in Redis: the store, its key layout, Lua scripts, commit encoding, record
codec and topic-aware offset marks.
"""
