"""Apps built on rdbsync's public app API (``node.app``): ``apps.ontap`` (the default)
and ``apps.proxy`` (a reverse-proxy appliance, the worked example of the README)."""
