"""The Kubernetes agent (``skiff-router kube-agent``), run beside the router in a pod.

It follows the API (pods and Services of its namespace) and the router's
multicast, and writes the router's overlay file. Pure logic lives in
``selector``, ``objects``, ``listwatch``, ``exposure`` and ``plan`` (plain data
in, plain data out); ``api`` and ``agent`` are the thin I/O layer
(``http.client`` over TLS, threads). See docs/design.md, "Kubernetes sites".
"""
