using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Stun;

/// <summary>A remote UDP address read straight out of a <see cref="SocketAddress"/>, so the receive path allocates nothing.</summary>
internal readonly record struct PeerAddress(bool IsIPv6, ulong High, ulong Low, ushort Port)
{
    /// <summary>
    /// The rate-limit key: the address for IPv4, the /64 prefix for IPv6, because one IPv6 host
    /// owns a whole /64 and could otherwise rotate addresses to dodge a per-address bucket.
    /// </summary>
    public PeerAddress RateKey => IsIPv6 ? new PeerAddress(true, High, 0, 0) : this with { Port = 0 };

    public static bool TryRead(SocketAddress address, out PeerAddress peer)
    {
        peer = default;
        ReadOnlySpan<byte> raw = address.Buffer.Span[..address.Size];
        switch (address.Family)
        {
            case AddressFamily.InterNetwork when raw.Length >= 8:
                peer = new PeerAddress(false, 0, BinaryPrimitives.ReadUInt32BigEndian(raw[4..]), BinaryPrimitives.ReadUInt16BigEndian(raw[2..]));
                return true;
            case AddressFamily.InterNetworkV6 when raw.Length >= 24:
                peer = FromIPv6(raw.Slice(8, 16), BinaryPrimitives.ReadUInt16BigEndian(raw[2..]));
                return true;
            default:
                return false;
        }
    }

    public static PeerAddress FromEndPoint(IPEndPoint endPoint)
    {
        Span<byte> bytes = stackalloc byte[16];
        int n = StunAddress.GetAddressBytes(endPoint.Address, bytes);
        return n == 4
            ? new PeerAddress(false, 0, BinaryPrimitives.ReadUInt32BigEndian(bytes), (ushort)endPoint.Port)
            : FromIPv6(bytes, (ushort)endPoint.Port);
    }

    /// <summary>Writes 4 or 16 address bytes and returns how many.</summary>
    public int WriteAddress(Span<byte> destination)
    {
        if (!IsIPv6)
        {
            BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)Low);
            return 4;
        }

        BinaryPrimitives.WriteUInt64BigEndian(destination, High);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Low);
        return 16;
    }

    public IPEndPoint ToEndPoint()
    {
        Span<byte> bytes = stackalloc byte[16];
        int n = WriteAddress(bytes);
        return new IPEndPoint(new IPAddress(bytes[..n]), Port);
    }

    public override string ToString() => ToEndPoint().ToString();

    private static PeerAddress FromIPv6(ReadOnlySpan<byte> address, ushort port)
    {
        ulong high = BinaryPrimitives.ReadUInt64BigEndian(address);
        ulong low = BinaryPrimitives.ReadUInt64BigEndian(address[8..]);

        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; answer them as the IPv4 they are.
        return high == 0 && (low >> 32) == 0xFFFF
            ? new PeerAddress(false, 0, low & 0xFFFFFFFF, port)
            : new PeerAddress(true, high, low, port);
    }
}
