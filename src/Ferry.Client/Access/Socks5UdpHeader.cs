using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>
/// The header RFC 1928 section 7 puts in front of every datagram relayed by a SOCKS5 UDP association: RSV (2 bytes), FRAG (1),
/// ATYP (1: IPv4, 3: domain name, 4: IPv6), DST.ADDR, DST.PORT (u16 big-endian), then the payload. Ferry does not reassemble
/// fragments: a datagram with FRAG other than 0 is refused, as the RFC allows.
/// </summary>
public static class Socks5UdpHeader
{
    /// <summary>Longest header: 4 fixed bytes, a 1-byte length and a 255-byte name, a 2-byte port.</summary>
    public const int MaxLength = 4 + 1 + 255 + 2;

    private const byte AddressIPv4 = 1;
    private const byte AddressDomain = 3;
    private const byte AddressIPv6 = 4;

    /// <summary>Reads the destination and where the payload starts; false with the reason when the header is malformed, fragmented or names no valid destination.</summary>
    public static bool TryParse(ReadOnlySpan<byte> datagram, out string host, out int port, out int headerLength, out string error)
    {
        host = "";
        port = 0;
        headerLength = 0;
        if (datagram.Length < 4)
        {
            error = $"the SOCKS5 UDP header is truncated: {datagram.Length} of at least 10 bytes";
            return false;
        }
        if (datagram[2] != 0)
        {
            error = $"the datagram is fragment {datagram[2]} of a fragmented one (FRAG {datagram[2]}): Ferry does not reassemble SOCKS5 UDP fragments; send whole datagrams";
            return false;
        }
        int addressLength;
        var addressStart = 4;
        switch (datagram[3])
        {
            case AddressIPv4:
                addressLength = 4;
                break;
            case AddressIPv6:
                addressLength = 16;
                break;
            case AddressDomain:
                if (datagram.Length < 5 || datagram[4] == 0)
                {
                    error = datagram.Length < 5 ? "the SOCKS5 UDP header is truncated inside its domain name" : "the SOCKS5 UDP header's domain name is empty";
                    return false;
                }
                addressLength = datagram[4];
                addressStart = 5;
                break;
            default:
                error = $"SOCKS5 address type {datagram[3]} is unknown (1 IPv4, 3 domain name, 4 IPv6)";
                return false;
        }
        var length = addressStart + addressLength + 2;
        if (datagram.Length < length)
        {
            error = $"the SOCKS5 UDP header is truncated: {datagram.Length} of {length} bytes";
            return false;
        }
        var address = datagram.Slice(addressStart, addressLength);
        host = datagram[3] == AddressDomain ? Encoding.Latin1.GetString(address) : new IPAddress(address).ToString();
        port = BinaryPrimitives.ReadUInt16BigEndian(datagram[(addressStart + addressLength)..]);
        if (!FlowHeader.TryValidate(FlowProtocol.Udp, host, port, out var problem))
        {
            error = $"the SOCKS5 UDP header names no valid destination: {problem}";
            return false;
        }
        headerLength = length;
        error = "";
        return true;
    }

    /// <summary>Writes the header naming <paramref name="host"/>:<paramref name="port"/> (IP literals as addresses, anything else as a domain name); returns its length.</summary>
    public static int Write(Span<byte> destination, string host, int port)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (!FlowHeader.TryValidate(FlowProtocol.Udp, host, port, out var error))
        {
            throw new ArgumentException($"cannot write a SOCKS5 UDP header for {FlowHeader.FormatHostPort(host, port)}: {error}", nameof(host));
        }
        var length = Length(host);
        if (destination.Length < length)
        {
            throw new ArgumentException($"the SOCKS5 UDP header needs {length} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        destination[0] = 0;
        destination[1] = 0;
        destination[2] = 0;
        int offset;
        if (FlowHeader.TryGetAddress(host, out var address))
        {
            destination[3] = address.AddressFamily == AddressFamily.InterNetwork ? AddressIPv4 : AddressIPv6;
            address.TryWriteBytes(destination[4..], out var written);
            offset = 4 + written;
        }
        else
        {
            destination[3] = AddressDomain;
            destination[4] = (byte)host.Length;
            offset = 5 + Encoding.ASCII.GetBytes(host, destination[5..]);
        }
        BinaryPrimitives.WriteUInt16BigEndian(destination[offset..], (ushort)port);
        return offset + 2;
    }

    /// <summary>Bytes the header naming <paramref name="host"/> takes.</summary>
    public static int Length(string host)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (FlowHeader.TryGetAddress(host, out var address))
        {
            return 4 + (address.AddressFamily == AddressFamily.InterNetwork ? 4 : 16) + 2;
        }
        return 4 + 1 + host.Length + 2;
    }
}
