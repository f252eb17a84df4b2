class GenmodelsError(Exception):
    """A problem with the user's input (config, data, files).

    `train.py` prints its message alone, without a traceback, so the message must say
    what was wrong, with the bad value, and what to do instead.
    """
