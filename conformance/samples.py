"""Messages as GB/T 28181 devices send them, shared by tests and benchmarks.

``REGISTER_WITH_AUTH`` is the second REGISTER of the reference's §2.1 flow: an IPC answering a
challenge without qop, password ``12345678``; its digest response is the reference's vector.
"""

REGISTER_WITH_AUTH = (
    b"REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK2049013710\r\n"
    b"From: <sip:34020000001320000001@3402000000>;tag=2043466181\r\n"
    b"To: <sip:34020000001320000001@3402000000>\r\n"
    b"Call-ID: 1011047669@192.168.1.64\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b"Contact: <sip:34020000001320000001@192.168.1.64:5060>\r\n"
    b'Authorization: Digest username="34020000001320000001",realm="3402000000",'
    b'nonce="9bd055b1c0d5c8a7",uri="sip:34020000002000000001@3402000000",'
    b'response="399ebdaa005171c436dc1b8bfbb5f042",algorithm=MD5\r\n'
    b"Max-Forwards: 70\r\n"
    b"User-Agent: IP Camera\r\n"
    b"Expires: 3600\r\n"
    b"X-GB-Ver: 3.0\r\n"
    b"Content-Length: 0\r\n\r\n"
)
