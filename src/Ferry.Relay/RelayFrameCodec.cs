using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>The frame types of the relay link protocol.</summary>
public enum RelayFrameType : byte
{
    /// <summary>Peer → relay: requestId u32 | ticket text (ASCII base64url).</summary>
    Bind = 1,

    /// <summary>Relay → peer: requestId u32 | channel u16 | present u8 | notAfter i64 | remote identity.</summary>
    BindOk = 2,

    /// <summary>Relay → peer: requestId u32 | reason u8 | message (UTF-8).</summary>
    BindRefused = 3,

    /// <summary>Both ways: channel u16 | opaque packet (1..65535 bytes). The channel names the remote peer on this link.</summary>
    Data = 4,

    /// <summary>Both ways: 8 opaque bytes, answered by a Pong echoing them.</summary>
    Ping = 5,

    /// <summary>Both ways: the 8 bytes of the Ping being answered.</summary>
    Pong = 6,

    /// <summary>Both ways: reason u8 | message (UTF-8); the sender closes the link after it.</summary>
    Error = 7,

    /// <summary>Peer → relay: channel u16; releases a binding.</summary>
    Unbind = 8,

    /// <summary>Relay → peer: channel u16 | present u8. Whether the remote peer of that channel can currently be reached here.</summary>
    PeerState = 9,
}

/// <summary>Outcome of trying to read one frame from a buffer.</summary>
public enum RelayFrameStatus
{
    /// <summary>A whole frame was read and the buffer advanced past it.</summary>
    Frame,

    /// <summary>The buffer holds only part of a frame; read more bytes.</summary>
    Incomplete,

    /// <summary>The bytes are not a valid frame; the link must be closed.</summary>
    Invalid,
}

/// <summary>One frame read from a link: its type and a payload slice valid until the buffer is advanced.</summary>
public readonly record struct RelayFrame(RelayFrameType Type, ReadOnlySequence<byte> Payload);

/// <summary>Encoder and hostile-input-safe parser for relay link frames: [type u8][length u24][payload].</summary>
public static class RelayFrameCodec
{
    /// <summary>Bytes before the payload: type and 24-bit big-endian length.</summary>
    public const int HeaderLength = 4;

    /// <summary>Largest packet a Data frame carries (the UDP payload limit QUIC already respects).</summary>
    public const int MaxPacketLength = 65535;

    /// <summary>Largest payload of any frame: a channel number and a maximal packet.</summary>
    public const int MaxPayloadLength = 2 + MaxPacketLength;

    /// <summary>Longest message text in BindRefused and Error frames, in bytes.</summary>
    public const int MaxMessageLength = 1024;

    /// <summary>Reads one frame. Never throws: oversize lengths, unknown types and wrong sizes return <see cref="RelayFrameStatus.Invalid"/> with a reason.</summary>
    public static RelayFrameStatus TryRead(ref ReadOnlySequence<byte> buffer, out RelayFrame frame, out string error)
    {
        frame = default;
        error = string.Empty;
        if (buffer.Length < HeaderLength)
        {
            // A partial header can already be judged by its type byte; failing early stops a peer from parking junk.
            if (!buffer.IsEmpty && !IsKnown(buffer.FirstSpan[0]))
            {
                error = $"unknown frame type 0x{buffer.FirstSpan[0]:x2}";
                return RelayFrameStatus.Invalid;
            }

            return RelayFrameStatus.Incomplete;
        }

        Span<byte> header = stackalloc byte[HeaderLength];
        buffer.Slice(0, HeaderLength).CopyTo(header);
        var type = header[0];
        var length = (header[1] << 16) | (header[2] << 8) | header[3];
        if (!IsKnown(type))
        {
            error = $"unknown frame type 0x{type:x2}";
            return RelayFrameStatus.Invalid;
        }

        if (length > MaxPayloadLength)
        {
            error = $"frame of {length} bytes exceeds the limit of {MaxPayloadLength}";
            return RelayFrameStatus.Invalid;
        }

        var (min, max) = PayloadBounds((RelayFrameType)type);
        if (length < min || length > max)
        {
            error = $"{(RelayFrameType)type} frame of {length} bytes is outside {min}..{max}";
            return RelayFrameStatus.Invalid;
        }

        if (buffer.Length - HeaderLength < length)
        {
            return RelayFrameStatus.Incomplete;
        }

        frame = new RelayFrame((RelayFrameType)type, buffer.Slice(HeaderLength, length));
        buffer = buffer.Slice(HeaderLength + length);
        return RelayFrameStatus.Frame;
    }

    /// <summary>Payload size limits per type; the parser enforces them before buffering the payload.</summary>
    public static (int Min, int Max) PayloadBounds(RelayFrameType type) => type switch
    {
        RelayFrameType.Bind => (5, 4 + RelayTicket.MaxTextLength),
        RelayFrameType.BindOk => (16, 15 + PeerIdentity.MaxLength),
        RelayFrameType.BindRefused => (5, 5 + MaxMessageLength),
        RelayFrameType.Data => (3, MaxPayloadLength),
        RelayFrameType.Ping or RelayFrameType.Pong => (8, 8),
        RelayFrameType.Error => (1, 1 + MaxMessageLength),
        RelayFrameType.Unbind => (2, 2),
        RelayFrameType.PeerState => (3, 3),
        _ => (1, 0),
    };

    private static bool IsKnown(byte type) => type is >= (byte)RelayFrameType.Bind and <= (byte)RelayFrameType.PeerState;

    // ---- payload decoders: each returns false rather than throwing on a payload that does not fit its type ----

    /// <summary>Decodes a Bind payload.</summary>
    public static bool TryReadBind(in ReadOnlySequence<byte> payload, out uint requestId, out string ticket)
    {
        var reader = new SequenceReader<byte>(payload);
        ticket = string.Empty;
        if (!reader.TryReadBigEndian(out int id) || reader.Remaining is < 1 or > RelayTicket.MaxTextLength)
        {
            requestId = 0;
            return false;
        }

        requestId = (uint)id;
        ticket = Encoding.ASCII.GetString(reader.UnreadSequence);
        return true;
    }

    /// <summary>Decodes a BindOk payload.</summary>
    public static bool TryReadBindOk(in ReadOnlySequence<byte> payload, out uint requestId, out ushort channel, out bool present, out DateTimeOffset notAfter, out string remotePeer)
    {
        var reader = new SequenceReader<byte>(payload);
        requestId = 0;
        channel = 0;
        present = false;
        notAfter = default;
        remotePeer = string.Empty;
        if (!reader.TryReadBigEndian(out int id) || !reader.TryReadBigEndian(out short ch) || !reader.TryRead(out var flag) || !reader.TryReadBigEndian(out long seconds))
        {
            return false;
        }

        present = flag != 0;
        if (flag > 1 || seconds < 0 || seconds > DateTimeOffset.MaxValue.ToUnixTimeSeconds() || reader.Remaining is < 1 or > PeerIdentity.MaxLength)
        {
            return false;
        }

        requestId = (uint)id;
        channel = (ushort)ch;
        notAfter = DateTimeOffset.FromUnixTimeSeconds(seconds);
        remotePeer = Encoding.ASCII.GetString(reader.UnreadSequence);
        return channel != 0 && PeerIdentity.IsValid(remotePeer);
    }

    /// <summary>Decodes a BindRefused payload.</summary>
    public static bool TryReadBindRefused(in ReadOnlySequence<byte> payload, out uint requestId, out RelayRefusal reason, out string message)
    {
        var reader = new SequenceReader<byte>(payload);
        requestId = 0;
        reason = RelayRefusal.None;
        message = string.Empty;
        if (!reader.TryReadBigEndian(out int id) || !reader.TryRead(out var code) || reader.Remaining > MaxMessageLength)
        {
            return false;
        }

        requestId = (uint)id;
        reason = (RelayRefusal)code;
        message = Encoding.UTF8.GetString(reader.UnreadSequence);
        return true;
    }

    /// <summary>Decodes a Data payload; <paramref name="packet"/> is a slice of <paramref name="payload"/>.</summary>
    public static bool TryReadData(in ReadOnlySequence<byte> payload, out ushort channel, out ReadOnlySequence<byte> packet)
    {
        var reader = new SequenceReader<byte>(payload);
        channel = 0;
        packet = default;
        if (!reader.TryReadBigEndian(out short ch) || reader.Remaining is < 1 or > MaxPacketLength || ch == 0)
        {
            return false;
        }

        channel = (ushort)ch;
        packet = reader.UnreadSequence;
        return true;
    }

    /// <summary>Decodes a Ping or Pong payload.</summary>
    public static bool TryReadPing(in ReadOnlySequence<byte> payload, out ulong value)
    {
        var reader = new SequenceReader<byte>(payload);
        value = 0;
        if (payload.Length != 8 || !reader.TryReadBigEndian(out long v))
        {
            return false;
        }

        value = (ulong)v;
        return true;
    }

    /// <summary>Decodes an Error payload.</summary>
    public static bool TryReadError(in ReadOnlySequence<byte> payload, out RelayRefusal reason, out string message)
    {
        var reader = new SequenceReader<byte>(payload);
        reason = RelayRefusal.None;
        message = string.Empty;
        if (!reader.TryRead(out var code) || reader.Remaining > MaxMessageLength)
        {
            return false;
        }

        reason = (RelayRefusal)code;
        message = Encoding.UTF8.GetString(reader.UnreadSequence);
        return true;
    }

    /// <summary>Decodes an Unbind payload.</summary>
    public static bool TryReadUnbind(in ReadOnlySequence<byte> payload, out ushort channel)
    {
        var reader = new SequenceReader<byte>(payload);
        channel = 0;
        if (payload.Length != 2 || !reader.TryReadBigEndian(out short ch) || ch == 0)
        {
            return false;
        }

        channel = (ushort)ch;
        return true;
    }

    // ---- encoders: write a whole frame into a span the caller sized with the matching *Length method ----

    /// <summary>Bytes of a Data frame carrying <paramref name="packetLength"/> bytes.</summary>
    public static int DataLength(int packetLength) => HeaderLength + 2 + packetLength;

    /// <summary>Writes a Data frame; returns bytes written.</summary>
    public static int WriteData(Span<byte> destination, ushort channel, ReadOnlySpan<byte> packet)
    {
        ValidatePacket(packet.Length);
        var at = WriteHeader(destination, RelayFrameType.Data, 2 + packet.Length);
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], channel);
        packet.CopyTo(destination[(at + 2)..]);
        return at + 2 + packet.Length;
    }

    /// <summary>Writes a Data frame whose packet is a sequence (the relay forwards straight out of its read buffer).</summary>
    public static int WriteData(Span<byte> destination, ushort channel, in ReadOnlySequence<byte> packet)
    {
        ValidatePacket(packet.Length);
        var at = WriteHeader(destination, RelayFrameType.Data, 2 + (int)packet.Length);
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], channel);
        packet.CopyTo(destination[(at + 2)..]);
        return at + 2 + (int)packet.Length;
    }

    /// <summary>Bytes of a Bind frame.</summary>
    public static int BindLength(string ticket) => HeaderLength + 4 + Encoding.ASCII.GetByteCount(ticket);

    /// <summary>Writes a Bind frame.</summary>
    public static int WriteBind(Span<byte> destination, uint requestId, string ticket)
    {
        var count = Encoding.ASCII.GetByteCount(ticket);
        if (count is < 1 or > RelayTicket.MaxTextLength)
        {
            throw new ArgumentException("The ticket text is empty or too long.", nameof(ticket));
        }

        var at = WriteHeader(destination, RelayFrameType.Bind, 4 + count);
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], requestId);
        return at + 4 + Encoding.ASCII.GetBytes(ticket, destination[(at + 4)..]);
    }

    /// <summary>Bytes of a BindOk frame.</summary>
    public static int BindOkLength(string remotePeer) => HeaderLength + 15 + Encoding.ASCII.GetByteCount(remotePeer);

    /// <summary>Writes a BindOk frame.</summary>
    public static int WriteBindOk(Span<byte> destination, uint requestId, ushort channel, bool present, DateTimeOffset notAfter, string remotePeer)
    {
        var count = Encoding.ASCII.GetByteCount(remotePeer);
        var at = WriteHeader(destination, RelayFrameType.BindOk, 15 + count);
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], requestId);
        BinaryPrimitives.WriteUInt16BigEndian(destination[(at + 4)..], channel);
        destination[at + 6] = present ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteInt64BigEndian(destination[(at + 7)..], notAfter.ToUnixTimeSeconds());
        return at + 15 + Encoding.ASCII.GetBytes(remotePeer, destination[(at + 15)..]);
    }

    /// <summary>Bytes of a PeerState frame.</summary>
    public const int PeerStateLength = HeaderLength + 3;

    /// <summary>Writes a PeerState frame.</summary>
    public static int WritePeerState(Span<byte> destination, ushort channel, bool present)
    {
        var at = WriteHeader(destination, RelayFrameType.PeerState, 3);
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], channel);
        destination[at + 2] = present ? (byte)1 : (byte)0;
        return at + 3;
    }

    /// <summary>Decodes a PeerState payload.</summary>
    public static bool TryReadPeerState(in ReadOnlySequence<byte> payload, out ushort channel, out bool present)
    {
        var reader = new SequenceReader<byte>(payload);
        channel = 0;
        present = false;
        if (payload.Length != 3 || !reader.TryReadBigEndian(out short ch) || !reader.TryRead(out var flag) || ch == 0 || flag > 1)
        {
            return false;
        }

        channel = (ushort)ch;
        present = flag == 1;
        return true;
    }

    /// <summary>Bytes of a BindRefused frame.</summary>
    public static int BindRefusedLength(string message) => HeaderLength + 5 + MessageBytes(message);

    /// <summary>Writes a BindRefused frame; the message is cut to <see cref="MaxMessageLength"/> bytes.</summary>
    public static int WriteBindRefused(Span<byte> destination, uint requestId, RelayRefusal reason, string message)
    {
        var count = MessageBytes(message);
        var at = WriteHeader(destination, RelayFrameType.BindRefused, 5 + count);
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], requestId);
        destination[at + 4] = (byte)reason;
        WriteMessage(destination.Slice(at + 5, count), message);
        return at + 5 + count;
    }

    /// <summary>Bytes of a Ping or Pong frame.</summary>
    public const int PingLength = HeaderLength + 8;

    /// <summary>Writes a Ping or Pong frame.</summary>
    public static int WritePing(Span<byte> destination, RelayFrameType type, ulong value)
    {
        if (type is not (RelayFrameType.Ping or RelayFrameType.Pong))
        {
            throw new ArgumentOutOfRangeException(nameof(type));
        }

        var at = WriteHeader(destination, type, 8);
        BinaryPrimitives.WriteUInt64BigEndian(destination[at..], value);
        return at + 8;
    }

    /// <summary>Bytes of an Error frame.</summary>
    public static int ErrorLength(string message) => HeaderLength + 1 + MessageBytes(message);

    /// <summary>Writes an Error frame; the message is cut to <see cref="MaxMessageLength"/> bytes.</summary>
    public static int WriteError(Span<byte> destination, RelayRefusal reason, string message)
    {
        var count = MessageBytes(message);
        var at = WriteHeader(destination, RelayFrameType.Error, 1 + count);
        destination[at] = (byte)reason;
        WriteMessage(destination.Slice(at + 1, count), message);
        return at + 1 + count;
    }

    /// <summary>Bytes of an Unbind frame.</summary>
    public const int UnbindLength = HeaderLength + 2;

    /// <summary>Writes an Unbind frame.</summary>
    public static int WriteUnbind(Span<byte> destination, ushort channel)
    {
        var at = WriteHeader(destination, RelayFrameType.Unbind, 2);
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], channel);
        return at + 2;
    }

    private static int WriteHeader(Span<byte> destination, RelayFrameType type, int payloadLength)
    {
        destination[0] = (byte)type;
        destination[1] = (byte)(payloadLength >> 16);
        destination[2] = (byte)(payloadLength >> 8);
        destination[3] = (byte)payloadLength;
        return HeaderLength;
    }

    private static void ValidatePacket(long length)
    {
        if (length is < 1 or > MaxPacketLength)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"A relayed packet is 1..{MaxPacketLength} bytes.");
        }
    }

    private static int MessageBytes(string message) => Math.Min(Encoding.UTF8.GetByteCount(message), MaxMessageLength);

    private static void WriteMessage(Span<byte> destination, string message)
    {
        // Cutting may split a UTF-8 sequence; decoders replace the broken tail, which is fine for human-readable text.
        var full = Encoding.UTF8.GetByteCount(message);
        if (full == destination.Length)
        {
            Encoding.UTF8.GetBytes(message, destination);
            return;
        }

        var rented = ArrayPool<byte>.Shared.Rent(full);
        try
        {
            Encoding.UTF8.GetBytes(message, rented);
            rented.AsSpan(0, destination.Length).CopyTo(destination);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}
