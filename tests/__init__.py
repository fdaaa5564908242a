"""The test suite: a package, so that test modules of the same name in two folders do not collide."""
