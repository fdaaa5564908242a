"""`python -m slirpy`: the `slirpy` command (same as the console script).

Only dispatches to `slirpy.cli.main`; it must not do anything else.
"""

from slirpy.cli import main

if __name__ == "__main__":
    main()
