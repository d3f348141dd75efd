#!/usr/bin/env python
"""Django's command-line utility for hitl."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hitl.settings")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see workers/__init__.py
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
