using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Ferry.Core.Flows;

/// <summary>The connector's answer to a flow header: a status and a human-readable reason, sent before any data.</summary>
/// <remarks>
/// Wire form: version (1 byte, 1), status (1 byte), message length M (u16 big-endian, at most 1024), M bytes of UTF-8.
/// Longer messages are cut at a character boundary when encoded.
/// </remarks>
public sealed record FlowReply(FlowStatus Status, string Message)
{
    public const byte Version = 1;

    /// <summary>Longest message in UTF-8 bytes.</summary>
    public const int MaxMessageBytes = 1024;

    public const int MaxEncodedLength = PrefixLength + MaxMessageBytes;

    private const int PrefixLength = 4;

    public bool IsOk => Status == FlowStatus.Ok;

    /// <summary>Writes the reply into <paramref name="destination"/> (at least <see cref="MaxEncodedLength"/> bytes is always enough) and returns the bytes written.</summary>
    public int Encode(Span<byte> destination)
    {
        if (!Enum.IsDefined(Status))
        {
            throw new ArgumentException($"flow status {(int)Status} is unknown", nameof(destination));
        }
        var message = Fit(Message ?? "");
        var messageBytes = Encoding.UTF8.GetByteCount(message);
        if (destination.Length < PrefixLength + messageBytes)
        {
            throw new ArgumentException($"the flow reply needs {PrefixLength + messageBytes} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        destination[0] = Version;
        destination[1] = (byte)Status;
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], (ushort)messageBytes);
        Encoding.UTF8.GetBytes(message, destination[PrefixLength..]);
        return PrefixLength + messageBytes;
    }

    public byte[] ToArray()
    {
        var buffer = new byte[MaxEncodedLength];
        var length = Encode(buffer);
        return buffer[..length];
    }

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

    /// <summary>Reads exactly one reply and nothing after it; malformed or truncated input throws <see cref="FlowProtocolException"/>.</summary>
    public static async ValueTask<FlowReply> ReadAsync(Stream stream, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var buffer = ArrayPool<byte>.Shared.Rent(MaxEncodedLength);
        try
        {
            var read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, PrefixLength), PrefixLength, throwOnEndOfStream: false, cancellationToken);
            if (read < PrefixLength)
            {
                throw new FlowProtocolException($"the flow reply is truncated: the stream ended after {read} of its first {PrefixLength} bytes");
            }
            var (status, length) = CheckPrefix(buffer);
            read = await stream.ReadAtLeastAsync(buffer.AsMemory(PrefixLength, length), length, throwOnEndOfStream: false, cancellationToken);
            if (read < length)
            {
                throw new FlowProtocolException($"the flow reply is truncated: the stream ended {length - read} bytes short of its {length}-byte message");
            }
            return new FlowReply(status, DecodeMessage(buffer.AsSpan(PrefixLength, length)));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Decodes a reply from the start of <paramref name="source"/>; false with a reason when it is malformed or incomplete.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> source, out FlowReply? reply, out int consumed, out string error)
    {
        reply = null;
        consumed = 0;
        if (source.Length < PrefixLength)
        {
            error = $"the flow reply is truncated: {source.Length} of its first {PrefixLength} bytes";
            return false;
        }
        try
        {
            var (status, length) = CheckPrefix(source);
            if (source.Length < PrefixLength + length)
            {
                error = $"the flow reply is truncated: {source.Length} of {PrefixLength + length} bytes";
                return false;
            }
            reply = new FlowReply(status, DecodeMessage(source.Slice(PrefixLength, length)));
            consumed = PrefixLength + length;
            error = "";
            return true;
        }
        catch (FlowProtocolException e)
        {
            error = e.Message;
            return false;
        }
    }

    private static (FlowStatus Status, int Length) CheckPrefix(ReadOnlySpan<byte> prefix)
    {
        if (prefix[0] != Version)
        {
            throw new FlowProtocolException($"flow reply version {prefix[0]} is not supported: this side speaks version {Version}; upgrade the older side");
        }
        var status = (FlowStatus)prefix[1];
        if (!Enum.IsDefined(status))
        {
            throw new FlowProtocolException($"flow reply status {prefix[1]} is unknown");
        }
        var length = BinaryPrimitives.ReadUInt16BigEndian(prefix[2..]);
        if (length > MaxMessageBytes)
        {
            throw new FlowProtocolException($"the flow reply's message is {length} bytes; at most {MaxMessageBytes} are allowed");
        }
        return (status, length);
    }

    private static string DecodeMessage(ReadOnlySpan<byte> bytes)
    {
        // The message ends up in logs and HTTP bodies: invalid UTF-8 becomes U+FFFD and control characters become '?', so a peer cannot forge log lines.
        var text = Encoding.UTF8.GetString(bytes);
        if (!text.Any(char.IsControl))
        {
            return text;
        }
        return string.Create(text.Length, text, static (span, source) =>
        {
            for (var i = 0; i < source.Length; i++)
            {
                span[i] = char.IsControl(source[i]) ? '?' : source[i];
            }
        });
    }

    private static string Fit(string message)
    {
        if (Encoding.UTF8.GetByteCount(message) <= MaxMessageBytes)
        {
            return message;
        }
        // Cut at a character boundary: never between the halves of a surrogate pair.
        var length = Math.Min(message.Length, MaxMessageBytes);
        while (length > 0 && (Encoding.UTF8.GetByteCount(message.AsSpan(0, length)) > MaxMessageBytes || char.IsHighSurrogate(message[length - 1])))
        {
            length--;
        }
        return message[..length];
    }

    /// <summary>
    /// The RFC 1928 reply code for a SOCKS5 CONNECT: Ok 0x00 succeeded; Denied and NoSuchResource 0x02 connection not allowed by ruleset;
    /// NameNotFound and Unreachable 0x04 host unreachable (what SOCKS servers answer for failed lookups and EHOSTUNREACH alike);
    /// Refused 0x05 connection refused; Timeout 0x06 TTL expired (the code SOCKS clients such as curl and Tor report as a timeout);
    /// ProtocolError 0x01 general failure.
    /// </summary>
    public static byte ToSocks5ReplyCode(FlowStatus status) => status switch
    {
        FlowStatus.Ok => 0x00,
        FlowStatus.Denied or FlowStatus.NoSuchResource => 0x02,
        FlowStatus.NameNotFound or FlowStatus.Unreachable => 0x04,
        FlowStatus.Refused => 0x05,
        FlowStatus.Timeout => 0x06,
        _ => 0x01,
    };

    /// <summary>
    /// The HTTP status for a CONNECT answer: Ok 200; Denied and NoSuchResource 403; NameNotFound 502 (the proxy could not reach an upstream,
    /// as for any failed lookup at a gateway — 404 would claim the proxy itself has nothing there); Refused and Unreachable 502; Timeout 504;
    /// ProtocolError 502.
    /// </summary>
    public static int ToHttpStatusCode(FlowStatus status) => status switch
    {
        FlowStatus.Ok => 200,
        FlowStatus.Denied or FlowStatus.NoSuchResource => 403,
        FlowStatus.Timeout => 504,
        _ => 502,
    };

    /// <summary>The reason phrase that goes with <see cref="ToHttpStatusCode"/>.</summary>
    public static string ToHttpReasonPhrase(FlowStatus status) => ToHttpStatusCode(status) switch
    {
        200 => "Connection Established",
        403 => "Forbidden",
        504 => "Gateway Timeout",
        _ => "Bad Gateway",
    };

    public override string ToString() => Message.Length == 0 ? Status.ToString() : $"{Status}: {Message}";
}
