"""A reward that needs a credential (as a judge's ``api_key``): it fails every row without it."""

SECRET = "sk-test-1234567890"


def keyed(completions, api_key=None, **columns):
    if api_key != SECRET:
        raise ValueError("no api_key")
    return [float(len(c) % 2) for c in completions]
