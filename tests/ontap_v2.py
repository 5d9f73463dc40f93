"""The ONTAP app as a later version would ship it (same tables, version 2.0): what a
rolling upgrade runs, for the mixed-app tests."""

from __future__ import annotations

import dataclasses

from apps.ontap import app as ontap_app

app = dataclasses.replace(ontap_app, version="2.0")
