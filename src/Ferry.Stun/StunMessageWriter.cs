using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;
using System.Text;

namespace Ferry.Stun;

/// <summary>Builds one STUN message into a caller-provided buffer, keeping the header length current.</summary>
/// <remarks>
/// Add attributes in wire order; MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT go last,
/// in that order. Running out of buffer is a programming error and throws.
/// </remarks>
public ref struct StunMessageWriter
{
    private readonly Span<byte> _buffer;
    private int _length;

    /// <summary>Starts a message with the magic cookie and the given transaction id.</summary>
    public StunMessageWriter(Span<byte> buffer, StunMessageType type, StunTransactionId transactionId)
    {
        if (buffer.Length < StunConstants.HeaderLength)
        {
            throw new ArgumentException("The buffer cannot hold a STUN header.", nameof(buffer));
        }

        _buffer = buffer;
        BinaryPrimitives.WriteUInt16BigEndian(buffer, type.ToWire());
        BinaryPrimitives.WriteUInt16BigEndian(buffer[2..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(buffer[4..], StunConstants.MagicCookie);
        transactionId.WriteTo(buffer[8..]);
        _length = StunConstants.HeaderLength;
        PaddingByte = 0;
    }

    /// <summary>The value written into padding; RFC 5769's vectors use spaces, everyone else zero.</summary>
    internal byte PaddingByte { get; set; }

    /// <summary>Bytes written so far, header included.</summary>
    public readonly int Length => _length;

    /// <summary>The message as written so far.</summary>
    public readonly ReadOnlySpan<byte> Written => _buffer[.._length];

    /// <summary>Appends an attribute with a raw value, padded to four bytes.</summary>
    public void AddAttribute(ushort type, scoped ReadOnlySpan<byte> value)
    {
        Span<byte> dest = Reserve(type, value.Length);
        value.CopyTo(dest);
    }

    /// <summary>Appends MAPPED-ADDRESS.</summary>
    public void AddMappedAddress(IPEndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        Span<byte> address = stackalloc byte[16];
        int n = StunAddress.GetAddressBytes(endPoint.Address, address);
        AddAddress(StunAttributeType.MappedAddress, address[..n], (ushort)endPoint.Port, xor: false);
    }

    /// <summary>Appends XOR-MAPPED-ADDRESS.</summary>
    public void AddXorMappedAddress(IPEndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        Span<byte> address = stackalloc byte[16];
        int n = StunAddress.GetAddressBytes(endPoint.Address, address);
        AddAddress(StunAttributeType.XorMappedAddress, address[..n], (ushort)endPoint.Port, xor: true);
    }

    /// <summary>Appends XOR-MAPPED-ADDRESS from raw address bytes (4 or 16), for the allocation-free server path.</summary>
    internal void AddXorMappedAddress(scoped ReadOnlySpan<byte> address, ushort port) =>
        AddAddress(StunAttributeType.XorMappedAddress, address, port, xor: true);

    /// <summary>Appends USERNAME.</summary>
    public void AddUsername(string username) => AddString(StunAttributeType.Username, username, StunConstants.MaxUsernameBytes);

    /// <summary>Appends SOFTWARE.</summary>
    public void AddSoftware(string software) => AddString(StunAttributeType.Software, software, StunConstants.MaxSoftwareBytes);

    /// <summary>Appends ERROR-CODE with a code from 300 to 699 and a reason phrase.</summary>
    public void AddErrorCode(int code, string reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        if (code is < 300 or > 699)
        {
            throw new ArgumentOutOfRangeException(nameof(code), code, "STUN error codes run from 300 to 699.");
        }

        int reasonBytes = Encoding.UTF8.GetByteCount(reason);
        if (reasonBytes > StunConstants.MaxReasonBytes)
        {
            throw new ArgumentException("The reason phrase is too long.", nameof(reason));
        }

        Span<byte> dest = Reserve((ushort)StunAttributeType.ErrorCode, 4 + reasonBytes);
        dest[0] = 0;
        dest[1] = 0;
        dest[2] = (byte)(code / 100);
        dest[3] = (byte)(code % 100);
        Encoding.UTF8.GetBytes(reason, dest[4..]);
    }

    /// <summary>Appends UNKNOWN-ATTRIBUTES.</summary>
    public void AddUnknownAttributes(scoped ReadOnlySpan<ushort> types)
    {
        Span<byte> dest = Reserve((ushort)StunAttributeType.UnknownAttributes, types.Length * 2);
        for (int i = 0; i < types.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(dest[(i * 2)..], types[i]);
        }
    }

    /// <summary>Appends the ICE PRIORITY.</summary>
    public void AddPriority(uint priority) =>
        BinaryPrimitives.WriteUInt32BigEndian(Reserve((ushort)StunAttributeType.Priority, 4), priority);

    /// <summary>Appends the ICE USE-CANDIDATE flag.</summary>
    public void AddUseCandidate() => Reserve((ushort)StunAttributeType.UseCandidate, 0);

    /// <summary>Appends ICE-CONTROLLED with its tie-breaker.</summary>
    public void AddIceControlled(ulong tieBreaker) =>
        BinaryPrimitives.WriteUInt64BigEndian(Reserve((ushort)StunAttributeType.IceControlled, 8), tieBreaker);

    /// <summary>Appends ICE-CONTROLLING with its tie-breaker.</summary>
    public void AddIceControlling(ulong tieBreaker) =>
        BinaryPrimitives.WriteUInt64BigEndian(Reserve((ushort)StunAttributeType.IceControlling, 8), tieBreaker);

    /// <summary>Appends MESSAGE-INTEGRITY (HMAC-SHA1) over everything written so far.</summary>
    public void AddMessageIntegrity(scoped ReadOnlySpan<byte> key)
    {
        int start = _length;
        Span<byte> dest = Reserve((ushort)StunAttributeType.MessageIntegrity, StunConstants.MessageIntegrityLength);
        StunMessage.ComputeIntegrity(_buffer[..start], StunConstants.MessageIntegrityLength, key, sha256: false, dest);
    }

    /// <summary>Appends MESSAGE-INTEGRITY-SHA256, optionally truncated to 16..32 bytes in steps of four.</summary>
    public void AddMessageIntegritySha256(scoped ReadOnlySpan<byte> key, int length = HMACSHA256.HashSizeInBytes)
    {
        if (length is < 16 or > 32 || (length & 3) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "MESSAGE-INTEGRITY-SHA256 is 16 to 32 bytes, a multiple of four.");
        }

        int start = _length;
        Span<byte> dest = Reserve((ushort)StunAttributeType.MessageIntegritySha256, length);
        Span<byte> mac = stackalloc byte[HMACSHA256.HashSizeInBytes];
        StunMessage.ComputeIntegrity(_buffer[..start], length, key, sha256: true, mac);
        mac[..length].CopyTo(dest);
    }

    /// <summary>Appends FINGERPRINT; nothing may follow it.</summary>
    public void AddFingerprint()
    {
        int start = _length;
        Span<byte> dest = Reserve((ushort)StunAttributeType.Fingerprint, 4);
        BinaryPrimitives.WriteUInt32BigEndian(dest, StunMessage.ComputeFingerprint(_buffer[..start]));
    }

    private void AddAddress(StunAttributeType type, scoped ReadOnlySpan<byte> address, ushort port, bool xor)
    {
        Span<byte> dest = Reserve((ushort)type, 4 + address.Length);
        StunAddress.Encode(dest, address, port, xor ? _buffer.Slice(4, 16) : default);
    }

    private void AddString(StunAttributeType type, string text, int maxBytes)
    {
        ArgumentNullException.ThrowIfNull(text);
        int count = Encoding.UTF8.GetByteCount(text);
        if (count > maxBytes)
        {
            throw new ArgumentException($"The {type} value is longer than {maxBytes} bytes.", nameof(text));
        }

        Encoding.UTF8.GetBytes(text, Reserve((ushort)type, count));
    }

    // Writes the attribute header and padding, updates the message length, and returns the value slot.
    private Span<byte> Reserve(ushort type, int valueLength)
    {
        int padded = (valueLength + 3) & ~3;
        if (valueLength > ushort.MaxValue || _length + 4 + padded > _buffer.Length || _length + 4 + padded - StunConstants.HeaderLength > ushort.MaxValue)
        {
            throw new InvalidOperationException("The STUN message does not fit in its buffer.");
        }

        BinaryPrimitives.WriteUInt16BigEndian(_buffer[_length..], type);
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[(_length + 2)..], (ushort)valueLength);
        Span<byte> value = _buffer.Slice(_length + 4, valueLength);
        _buffer.Slice(_length + 4 + valueLength, padded - valueLength).Fill(PaddingByte);
        _length += 4 + padded;
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[2..], (ushort)(_length - StunConstants.HeaderLength));
        return value;
    }
}
