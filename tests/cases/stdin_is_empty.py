# expect: {"status": "error", "error_type": "EOFError"}
# Standard input is empty: input() ends at once instead of waiting.
input()
