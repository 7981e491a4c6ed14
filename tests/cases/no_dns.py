# expect: {"status": "ok", "stdout_contains": ["no getaddrinfo: ", "no connection: "], "stdout_excludes": ["resolved", "connected"]}
# No name resolution and no outgoing connection.
import socket
try:
    print("resolved", socket.getaddrinfo("localhost", 80))
except Exception as e:
    print("no getaddrinfo:", type(e).__name__)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
    print("connected")
except Exception as e:
    print("no connection:", type(e).__name__)
