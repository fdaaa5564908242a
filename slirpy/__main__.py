"""`python -m slirpy`: the `slirpy` command (same as the console script).

Only dispatches to `slirpy.frontends.main.main`; it must not do anything else.
"""

from slirpy.frontends.main import main

if __name__ == "__main__":
    main()
