using System.Buffers;
using System.Buffers.Binary;

namespace Ferry.Core.Flows;

/// <summary>The wire format of UDP flows: quarter-stream-id datagrams, and the length-prefixed records of the flow's stream.</summary>
/// <remarks>
/// <para>
/// A UDP flow is one QUIC bidirectional stream: the client writes a <see cref="FlowHeader"/> (protocol UDP), the connector answers
/// with a <see cref="FlowReply"/>, and the stream stays open for the flow's life. Closing the stream (FIN, or a reset) ends the flow.
/// </para>
/// <para>
/// Each UDP payload travels as one QUIC DATAGRAM frame (RFC 9221): a QUIC variable-length integer holding the flow's stream id / 4
/// (the "quarter stream id", as in RFC 9297), then the payload. A payload that does not fit in one datagram (the connection's
/// MaxDatagramPayloadSize), or any payload when the peer takes no datagrams, goes on the flow's stream instead as a record:
/// a u16 big-endian length (0-65534), then that many bytes. Both sides accept payloads both ways.
/// </para>
/// <para>
/// A record whose length field is 0xFFFF carries no payload: a <see cref="FlowReply"/> follows, telling why its sender ends the flow
/// (idle timeout, revocation, a failed destination socket); the sender then ends its side of the stream.
/// </para>
/// </remarks>
public static class UdpFlowFraming
{
    /// <summary>Largest UDP payload a flow carries; larger than any real UDP payload (65507 over IPv4, 65527 over IPv6).</summary>
    public const int MaxPayloadLength = 0xFFFE;

    /// <summary>The length field that marks a close record instead of a payload.</summary>
    public const ushort CloseMarker = 0xFFFF;

    /// <summary>Bytes in front of each payload on the stream.</summary>
    public const int RecordPrefixLength = 2;

    /// <summary>Longest QUIC variable-length integer.</summary>
    public const int MaxVarintLength = 8;

    /// <summary>Largest value a QUIC variable-length integer holds (2^62 - 1).</summary>
    public const long MaxVarint = (1L << 62) - 1;

    /// <summary>The id datagrams name a flow by: its QUIC stream id divided by 4.</summary>
    public static long QuarterStreamId(long streamId)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(streamId);
        return streamId >> 2;
    }

    /// <summary>Bytes the QUIC varint encoding of <paramref name="value"/> takes (RFC 9000 section 16).</summary>
    public static int VarintLength(long value) => value switch
    {
        < 0 or > MaxVarint => throw new ArgumentOutOfRangeException(nameof(value), value, "a QUIC varint holds 0 to 2^62-1"),
        <= 63 => 1,
        <= 16383 => 2,
        <= 1073741823 => 4,
        _ => 8,
    };

    /// <summary>Writes <paramref name="value"/> as a QUIC varint and returns the bytes written.</summary>
    public static int WriteVarint(Span<byte> destination, long value)
    {
        var length = VarintLength(value);
        if (destination.Length < length)
        {
            throw new ArgumentException($"the varint needs {length} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        switch (length)
        {
            case 1:
                destination[0] = (byte)value;
                break;
            case 2:
                BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)(0x4000 | value));
                break;
            case 4:
                BinaryPrimitives.WriteUInt32BigEndian(destination, 0x8000_0000u | (uint)value);
                break;
            default:
                BinaryPrimitives.WriteUInt64BigEndian(destination, 0xC000_0000_0000_0000ul | (ulong)value);
                break;
        }
        return length;
    }

    /// <summary>Reads a QUIC varint from the start of <paramref name="source"/>; false when it is cut short.</summary>
    public static bool TryReadVarint(ReadOnlySpan<byte> source, out long value, out int length)
    {
        value = 0;
        length = 0;
        if (source.IsEmpty)
        {
            return false;
        }
        var needed = 1 << (source[0] >> 6);
        if (source.Length < needed)
        {
            return false;
        }
        value = needed switch
        {
            1 => source[0] & 0x3F,
            2 => BinaryPrimitives.ReadUInt16BigEndian(source) & 0x3FFF,
            4 => BinaryPrimitives.ReadUInt32BigEndian(source) & 0x3FFF_FFFF,
            _ => (long)(BinaryPrimitives.ReadUInt64BigEndian(source) & 0x3FFF_FFFF_FFFF_FFFFul),
        };
        length = needed;
        return true;
    }

    /// <summary>Bytes a datagram carrying <paramref name="payloadLength"/> bytes for flow <paramref name="quarterStreamId"/> takes.</summary>
    public static int DatagramLength(long quarterStreamId, int payloadLength) => VarintLength(quarterStreamId) + payloadLength;

    /// <summary>Writes the datagram form of a payload (quarter stream id, then the payload) and returns its length.</summary>
    public static int EncodeDatagram(Span<byte> destination, long quarterStreamId, ReadOnlySpan<byte> payload)
    {
        CheckPayload(payload.Length);
        var length = DatagramLength(quarterStreamId, payload.Length);
        if (destination.Length < length)
        {
            throw new ArgumentException($"the datagram needs {length} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        var prefix = WriteVarint(destination, quarterStreamId);
        payload.CopyTo(destination[prefix..]);
        return length;
    }

    /// <summary>Splits a received datagram into the flow it belongs to and where its payload starts; false when the id is cut short.</summary>
    public static bool TryDecodeDatagram(ReadOnlySpan<byte> datagram, out long quarterStreamId, out int payloadOffset)
    {
        var ok = TryReadVarint(datagram, out quarterStreamId, out payloadOffset);
        return ok && datagram.Length - payloadOffset <= MaxPayloadLength;
    }

    /// <summary>Writes the stream form of a payload (u16 length, then the payload) and returns its length.</summary>
    public static int EncodeRecord(Span<byte> destination, ReadOnlySpan<byte> payload)
    {
        CheckPayload(payload.Length);
        if (destination.Length < RecordPrefixLength + payload.Length)
        {
            throw new ArgumentException($"the record needs {RecordPrefixLength + payload.Length} bytes, the buffer has {destination.Length}", nameof(destination));
        }
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)payload.Length);
        payload.CopyTo(destination[RecordPrefixLength..]);
        return RecordPrefixLength + payload.Length;
    }

    /// <summary>Writes a close record (the 0xFFFF marker, then <paramref name="reason"/>) and returns its length.</summary>
    public static int EncodeClose(Span<byte> destination, FlowReply reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        if (destination.Length < RecordPrefixLength)
        {
            throw new ArgumentException("the close record needs at least 2 bytes", nameof(destination));
        }
        BinaryPrimitives.WriteUInt16BigEndian(destination, CloseMarker);
        return RecordPrefixLength + reason.Encode(destination[RecordPrefixLength..]);
    }

    /// <summary>
    /// Reads the next record of a flow's stream into <paramref name="buffer"/> (at least <see cref="MaxPayloadLength"/> bytes).
    /// The stream's end before a record is <see cref="UdpStreamRecordKind.End"/>; a record cut short or a malformed close record
    /// throws <see cref="FlowProtocolException"/>; the stream's own failures pass through.
    /// </summary>
    public static async ValueTask<UdpStreamRecord> ReadRecordAsync(Stream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(buffer);
        if (buffer.Length < MaxPayloadLength)
        {
            throw new ArgumentException($"the buffer must hold {MaxPayloadLength} bytes, the longest payload; it has {buffer.Length}", nameof(buffer));
        }
        var read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, RecordPrefixLength), RecordPrefixLength, throwOnEndOfStream: false, cancellationToken);
        if (read == 0)
        {
            return new UdpStreamRecord(UdpStreamRecordKind.End, 0, null);
        }
        if (read < RecordPrefixLength)
        {
            throw new FlowProtocolException("a UDP flow record is truncated: the stream ended inside its 2-byte length");
        }
        var length = BinaryPrimitives.ReadUInt16BigEndian(buffer);
        if (length == CloseMarker)
        {
            try
            {
                var reason = await FlowReply.ReadAsync(stream, cancellationToken);
                return new UdpStreamRecord(UdpStreamRecordKind.Close, 0, reason);
            }
            catch (FlowProtocolException e)
            {
                throw new FlowProtocolException($"a UDP flow's close record is malformed: {e.Message}", e);
            }
        }
        read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, length), length, throwOnEndOfStream: false, cancellationToken);
        if (read < length)
        {
            throw new FlowProtocolException($"a UDP flow record is truncated: the stream ended {length - read} bytes short of its {length}-byte payload");
        }
        return new UdpStreamRecord(UdpStreamRecordKind.Payload, length, null);
    }

    /// <summary>Writes one payload record as a single write (pooled buffer), so a stream that frames writes sends it in one piece.</summary>
    public static async ValueTask WriteRecordAsync(Stream stream, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        CheckPayload(payload.Length);
        var buffer = ArrayPool<byte>.Shared.Rent(RecordPrefixLength + payload.Length);
        try
        {
            var length = EncodeRecord(buffer, payload.Span);
            await stream.WriteAsync(buffer.AsMemory(0, length), cancellationToken);
            await stream.FlushAsync(cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a close record telling the peer why this side ends the flow.</summary>
    public static async ValueTask WriteCloseAsync(Stream stream, FlowReply reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var buffer = ArrayPool<byte>.Shared.Rent(RecordPrefixLength + FlowReply.MaxEncodedLength);
        try
        {
            var length = EncodeClose(buffer, reason);
            await stream.WriteAsync(buffer.AsMemory(0, length), cancellationToken);
            await stream.FlushAsync(cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static void CheckPayload(int length)
    {
        if (length > MaxPayloadLength)
        {
            throw new ArgumentException($"a UDP payload of {length} bytes is too long: a flow carries at most {MaxPayloadLength} bytes per packet");
        }
    }
}

/// <summary>What a record of a UDP flow's stream was.</summary>
public enum UdpStreamRecordKind
{
    /// <summary>A payload of <see cref="UdpStreamRecord.Length"/> bytes, now at the start of the read buffer.</summary>
    Payload,

    /// <summary>The peer ends the flow and says why in <see cref="UdpStreamRecord.Reason"/>.</summary>
    Close,

    /// <summary>The stream ended (FIN) before another record.</summary>
    End,
}

/// <summary>One record read from a UDP flow's stream.</summary>
public readonly record struct UdpStreamRecord(UdpStreamRecordKind Kind, int Length, FlowReply? Reason);
