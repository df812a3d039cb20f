"""What a failure means: the retry and poison rule, stalls and how they show, setting a user aside,
dead letters.
"""
