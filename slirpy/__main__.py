"""`python -m slirpy`: the `slirpy` command (same as the console script).

Only dispatches to `slirpy.entry.slirpy_main`; it must not do anything else.
"""

from slirpy.entry import slirpy_main

if __name__ == "__main__":
    slirpy_main()
