"""Paths the tests share: the repository root (where the flagfiles are)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
