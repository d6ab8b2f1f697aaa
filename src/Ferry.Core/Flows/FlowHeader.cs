using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Ferry.Core.Flows;

/// <summary>What opens every flow stream: the destination the client asks the connector to reach.</summary>
/// <remarks>
/// Wire form: version (1 byte, 1), protocol (1 byte), host length N (1 byte, 1-255), N bytes of ASCII host
/// (a DNS name, internationalised names as punycode A-labels, or an IP literal without brackets), port (u16 big-endian, 1-65535).
/// </remarks>
public sealed record FlowHeader(FlowProtocol Protocol, string Host, int Port)
{
    public const byte Version = 1;

    /// <summary>Longest host in bytes; the wire carries its length in one byte.</summary>
    public const int MaxHostLength = 255;

    /// <summary>Longest encoded header: the fixed part plus the longest host.</summary>
    public const int MaxEncodedLength = FixedLength + MaxHostLength;

    private const int PrefixLength = 3;
    private const int FixedLength = PrefixLength + 2;

    /// <summary>Bytes this header takes on the wire.</summary>
    public int EncodedLength => FixedLength + Host.Length;

    /// <summary>Writes the header into <paramref name="destination"/> and returns the bytes written; throws <see cref="ArgumentException"/> when the header is not valid.</summary>
    public int Encode(Span<byte> destination)
    {
        if (!TryValidate(Protocol, Host, Port, out var error))
        {
            throw new ArgumentException($"cannot encode flow header: {error}", nameof(destination));
        }
        if (destination.Length < EncodedLength)
        {
            throw new ArgumentException($"the flow header needs {EncodedLength} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        destination[0] = Version;
        destination[1] = (byte)Protocol;
        destination[2] = (byte)Host.Length;
        Encoding.ASCII.GetBytes(Host, destination[PrefixLength..]);
        BinaryPrimitives.WriteUInt16BigEndian(destination[(PrefixLength + Host.Length)..], (ushort)Port);
        return EncodedLength;
    }

    public byte[] ToArray()
    {
        var bytes = new byte[EncodedLength];
        Encode(bytes);
        return bytes;
    }

    /// <summary>Writes the header as one write, so a stream that frames writes sends it in one piece.</summary>
    public async ValueTask WriteAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var buffer = ArrayPool<byte>.Shared.Rent(MaxEncodedLength);
        try
        {
            var length = Encode(buffer);
            await stream.WriteAsync(buffer.AsMemory(0, length), cancellationToken);
            await stream.FlushAsync(cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Reads exactly one header and nothing after it. Malformed or truncated input throws <see cref="FlowProtocolException"/>;
    /// the stream's own failures (<see cref="IOException"/>, cancellation) pass through.
    /// </summary>
    public static async ValueTask<FlowHeader> ReadAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var buffer = ArrayPool<byte>.Shared.Rent(MaxEncodedLength);
        try
        {
            var read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, PrefixLength), PrefixLength, throwOnEndOfStream: false, cancellationToken);
            if (read < PrefixLength)
            {
                throw new FlowProtocolException($"the flow header is truncated: the stream ended after {read} of its first {PrefixLength} bytes");
            }
            CheckPrefix(buffer, out var hostLength);
            var rest = hostLength + 2;
            read = await stream.ReadAtLeastAsync(buffer.AsMemory(PrefixLength, rest), rest, throwOnEndOfStream: false, cancellationToken);
            if (read < rest)
            {
                throw new FlowProtocolException($"the flow header is truncated: the stream ended {rest - read} bytes short of its {hostLength}-byte host and port");
            }
            return Parse(buffer.AsSpan(0, PrefixLength + rest));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Decodes a header from the start of <paramref name="source"/>; false with a reason when it is malformed or incomplete.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> source, out FlowHeader? header, out int consumed, out string error)
    {
        header = null;
        consumed = 0;
        try
        {
            if (source.Length < PrefixLength)
            {
                error = $"the flow header is truncated: {source.Length} of its first {PrefixLength} bytes";
                return false;
            }
            CheckPrefix(source, out var hostLength);
            var length = FixedLength + hostLength;
            if (source.Length < length)
            {
                error = $"the flow header is truncated: {source.Length} of {length} bytes";
                return false;
            }
            header = Parse(source[..length]);
            consumed = length;
            error = "";
            return true;
        }
        catch (FlowProtocolException e)
        {
            error = e.Message;
            return false;
        }
    }

    private static void CheckPrefix(ReadOnlySpan<byte> prefix, out int hostLength)
    {
        if (prefix[0] != Version)
        {
            throw new FlowProtocolException($"flow header version {prefix[0]} is not supported: this side speaks version {Version}; upgrade the older side");
        }
        if (prefix[1] is not ((byte)FlowProtocol.Tcp or (byte)FlowProtocol.Udp))
        {
            throw new FlowProtocolException($"flow protocol {prefix[1]} is unknown: expected {(byte)FlowProtocol.Tcp} (TCP) or {(byte)FlowProtocol.Udp} (UDP)");
        }
        hostLength = prefix[2];
        if (hostLength == 0)
        {
            throw new FlowProtocolException("the flow header names no host: the host length is 0");
        }
    }

    private static FlowHeader Parse(ReadOnlySpan<byte> header)
    {
        var hostLength = header[2];
        var hostBytes = header.Slice(PrefixLength, hostLength);
        foreach (var b in hostBytes)
        {
            if (b is <= 0x20 or >= 0x7F)
            {
                throw new FlowProtocolException($"the flow header's host holds byte 0x{b:x2}: hosts are printable ASCII (internationalised names travel as punycode)");
            }
        }
        var host = Encoding.ASCII.GetString(hostBytes);
        var port = BinaryPrimitives.ReadUInt16BigEndian(header[(PrefixLength + hostLength)..]);
        var protocol = (FlowProtocol)header[1];
        if (!TryValidate(protocol, host, port, out var error))
        {
            throw new FlowProtocolException($"the flow header is not valid: {error}");
        }
        return new FlowHeader(protocol, host, port);
    }

    /// <summary>Checks a destination: a known protocol, a host that is a DNS name or an IP literal, and a port from 1 to 65535.</summary>
    public static bool TryValidate(FlowProtocol protocol, string? host, int port, out string error)
    {
        if (protocol is not (FlowProtocol.Tcp or FlowProtocol.Udp))
        {
            error = $"protocol {(int)protocol} is unknown: use TCP or UDP";
            return false;
        }
        if (port is < 1 or > 65535)
        {
            error = $"port {port} is out of range: use 1-65535";
            return false;
        }
        return TryValidateHost(host, out error);
    }

    /// <summary>
    /// Checks that <paramref name="host"/> is a DNS name (letters, digits, '-', '_', labels of 1-63, at most 253 characters, one trailing dot allowed),
    /// a dotted-quad IPv4 address in plain decimal, or an IPv6 address without brackets or zone.
    /// </summary>
    public static bool TryValidateHost(string? host, out string error)
    {
        error = "";
        if (string.IsNullOrEmpty(host))
        {
            error = "the host is empty: give a DNS name or an IP address";
            return false;
        }
        if (host.Length > MaxHostLength)
        {
            error = $"the host is {host.Length} characters long; at most {MaxHostLength} fit";
            return false;
        }
        if (host.Contains(':', StringComparison.Ordinal))
        {
            // Zones ("%eth0") name interfaces of the connector host, which no client has any business choosing.
            if (!IsPlainIPv6(host, out _))
            {
                error = $"'{Shorten(host)}' is not an IPv6 address (write it without brackets or zone)";
                return false;
            }
            return true;
        }
        var name = host.EndsWith('.') ? host[..^1] : host;
        if (name.Length > 0 && name.All(c => char.IsAsciiDigit(c) || c == '.'))
        {
            if (!IsStrictIPv4(name))
            {
                // The system resolver reads "127.1" and "0177.0.0.1" as addresses; accepting them as names would let them slip past checks.
                error = $"'{Shorten(host)}' is not a dotted-quad IPv4 address: write four decimal numbers 0-255 without leading zeros";
                return false;
            }
            if (name.Length != host.Length)
            {
                error = $"'{Shorten(host)}' is an IPv4 address with a trailing dot: drop the dot";
                return false;
            }
            return true;
        }
        return IsValidDnsName(name, host, out error);
    }

    private static bool IsValidDnsName(string name, string host, out string error)
    {
        error = "";
        if (name.Length is 0 or > 253)
        {
            error = $"'{Shorten(host)}' is not a DNS name: a name is 1 to 253 characters";
            return false;
        }
        var labelStart = 0;
        for (var i = 0; i <= name.Length; i++)
        {
            if (i < name.Length && name[i] != '.')
            {
                var c = name[i];
                if (!(char.IsAsciiLetterOrDigit(c) || c == '-' || c == '_'))
                {
                    error = $"'{Shorten(host)}' is not a DNS name: '{c}' is not allowed (letters, digits, '-' and '_' only)";
                    return false;
                }
                continue;
            }
            var length = i - labelStart;
            if (length is 0 or > 63)
            {
                error = $"'{Shorten(host)}' is not a DNS name: each dot-separated label is 1 to 63 characters";
                return false;
            }
            if (name[labelStart] == '-' || name[i - 1] == '-')
            {
                error = $"'{Shorten(host)}' is not a DNS name: a label may not start or end with '-'";
                return false;
            }
            labelStart = i + 1;
        }
        return true;
    }

    // IPAddress.TryParse also takes "[::1]", "[::1]:80" and "::1%2"; a flow names a bare address.
    private static bool IsPlainIPv6(string text, [NotNullWhen(true)] out IPAddress? address)
    {
        address = null;
        foreach (var c in text)
        {
            if (!(char.IsAsciiHexDigit(c) || c is ':' or '.'))
            {
                return false;
            }
        }
        return IPAddress.TryParse(text, out address) && address.AddressFamily == AddressFamily.InterNetworkV6;
    }

    private static bool IsStrictIPv4(string text)
    {
        var parts = text.Split('.');
        if (parts.Length != 4)
        {
            return false;
        }
        foreach (var part in parts)
        {
            if (part.Length is 0 or > 3 || !part.All(char.IsAsciiDigit) || (part.Length > 1 && part[0] == '0') || int.Parse(part, System.Globalization.CultureInfo.InvariantCulture) > 255)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>The address when <paramref name="host"/> is an IP literal in the forms <see cref="TryValidateHost"/> accepts; anything else is a name.</summary>
    public static bool TryGetAddress(string host, [NotNullWhen(true)] out IPAddress? address)
    {
        address = null;
        if (string.IsNullOrEmpty(host))
        {
            return false;
        }
        if (host.Contains(':', StringComparison.Ordinal))
        {
            return IsPlainIPv6(host, out address);
        }
        return IsStrictIPv4(host) && IPAddress.TryParse(host, out address);
    }

    private static string Shorten(string text) => text.Length <= 64 ? text : text[..64] + "…";

    public override string ToString() => $"{Protocol.ToString().ToUpperInvariant()} {FormatHostPort(Host, Port)}";

    /// <summary>"host:port", with brackets around IPv6 literals.</summary>
    public static string FormatHostPort(string host, int port)
        => host.Contains(':', StringComparison.Ordinal) ? $"[{host}]:{port}" : $"{host}:{port}";
}
