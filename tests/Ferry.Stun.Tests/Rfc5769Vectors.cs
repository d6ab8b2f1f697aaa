namespace Ferry.Stun.Tests;

/// <summary>The test vectors of RFC 5769 section 2, typed in from the RFC's hex dumps.</summary>
internal static class Rfc5769Vectors
{
    public const string Password = "VOkJxbRl1RmTxUk/WvJxBt";
    public const string ClientSoftware = "STUN test client";
    public const string ServerSoftware = "test vector";
    public const string Username = "evtj:h6vY";
    public const uint Priority = 0x6e0001ff;
    public const ulong IceControlled = 0x932ff9b151263b36;
    public const int MappedPort = 32853;

    public static readonly byte[] TransactionId = TestSupport.Hex("b7e7a701 bc34d686 fa87dfae");

    // 2.1 Sample Request (padding bytes are spaces, as in the RFC).
    public static readonly byte[] Request = TestSupport.Hex("""
        00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
        00 24 00 04  6e 00 01 ff
        80 29 00 08  93 2f f9 b1  51 26 3b 36
        00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20
        00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
        80 28 00 04  e5 7a 3b cf
        """);

    // 2.2 Sample IPv4 Response: 192.0.2.1 port 32853.
    public static readonly byte[] ResponseIPv4 = TestSupport.Hex("""
        01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
        00 20 00 08  00 01 a1 47  e1 12 a6 43
        00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
        80 28 00 04  c0 7d 4c 96
        """);

    // 2.3 Sample IPv6 Response: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
    public static readonly byte[] ResponseIPv6 = TestSupport.Hex("""
        01 01 00 48  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
        80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
        00 20 00 14  00 02 a1 47  01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
        00 08 00 14  a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
        80 28 00 04  c8 fb 0b 4c
        """);
}
