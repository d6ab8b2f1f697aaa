using System.Buffers.Binary;

namespace Ferry.Stun;

/// <summary>What a datagram on Ferry's shared UDP socket carries, judged by its first byte (RFC 7983, RFC 9443).</summary>
public enum DatagramKind
{
    /// <summary>First byte 0..3 and the STUN magic cookie: STUN.</summary>
    Stun,

    /// <summary>Empty, or a first byte no protocol on the socket claims.</summary>
    Unknown,

    /// <summary>First byte 16..19: ZRTP.</summary>
    Zrtp,

    /// <summary>First byte 20..63: DTLS.</summary>
    Dtls,

    /// <summary>First byte 64..79: TURN channel data (or a QUIC short header, RFC 9443).</summary>
    TurnChannel,

    /// <summary>First byte 80..127: QUIC short header (RFC 9443), once the QUIC bit is set.</summary>
    Quic,

    /// <summary>First byte 128..191: RTP/RTCP, or QUIC.</summary>
    Rtp,

    /// <summary>First byte 192..255: QUIC long header.</summary>
    QuicLong,
}

/// <summary>Cheap checks that tell a STUN datagram apart from the QUIC that shares its socket.</summary>
public static class StunPacket
{
    /// <summary>
    /// True when the datagram could be STUN: first byte 0..3 (RFC 7983), at least a header, and the
    /// magic cookie in place. It does not validate attributes; <see cref="StunMessage.TryParse"/> does.
    /// </summary>
    public static bool IsStun(ReadOnlySpan<byte> datagram) =>
        datagram.Length >= StunConstants.HeaderLength
        && datagram[0] <= 3
        && BinaryPrimitives.ReadUInt32BigEndian(datagram[4..]) == StunConstants.MagicCookie;

    /// <summary>Sorts a datagram by its first byte and, for STUN, the magic cookie.</summary>
    public static DatagramKind Classify(ReadOnlySpan<byte> datagram)
    {
        if (datagram.IsEmpty)
        {
            return DatagramKind.Unknown;
        }

        byte first = datagram[0];
        return first switch
        {
            <= 3 => IsStun(datagram) ? DatagramKind.Stun : DatagramKind.Unknown,
            >= 16 and <= 19 => DatagramKind.Zrtp,
            >= 20 and <= 63 => DatagramKind.Dtls,
            >= 64 and <= 79 => DatagramKind.TurnChannel,
            >= 80 and <= 127 => DatagramKind.Quic,
            >= 128 and <= 191 => DatagramKind.Rtp,
            >= 192 => DatagramKind.QuicLong,
            _ => DatagramKind.Unknown,
        };
    }
}
