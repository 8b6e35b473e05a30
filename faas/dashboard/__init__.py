"""``faas dashboard``: a live view of an endpoint's fleet, served where the user
is (laptop or login node) and fed through the connection an Executor uses, so
nothing web runs on the cluster. Needs the ``faas[dashboard]`` extra (Bokeh)."""
