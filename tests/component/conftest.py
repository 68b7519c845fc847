"""Real parts for the tests of this folder: see helpers/fixtures.py."""

from helpers.fixtures import *  # noqa: F403
