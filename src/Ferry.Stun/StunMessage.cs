using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Ferry.Stun;

/// <summary>A validated, zero-copy view of one STUN message over the datagram that carried it.</summary>
/// <remarks>
/// <see cref="TryParse"/> walks every attribute once, so the getters afterwards cannot run out of
/// bounds. Attributes that follow MESSAGE-INTEGRITY (other than MESSAGE-INTEGRITY-SHA256 and
/// FINGERPRINT) are invisible to the getters, as RFC 8489 section 14.5 requires.
/// </remarks>
public readonly ref struct StunMessage
{
    private readonly ReadOnlySpan<byte> _data;
    private readonly int _integrityOffset;
    private readonly int _integritySha256Offset;
    private readonly int _fingerprintOffset;

    // Where lookups of ordinary attributes stop: the first integrity or fingerprint attribute.
    private readonly int _coveredEnd;

    private StunMessage(ReadOnlySpan<byte> data, int integrityOffset, int integritySha256Offset, int fingerprintOffset, int coveredEnd)
    {
        _data = data;
        _integrityOffset = integrityOffset;
        _integritySha256Offset = integritySha256Offset;
        _fingerprintOffset = fingerprintOffset;
        _coveredEnd = coveredEnd;
    }

    /// <summary>The message type.</summary>
    public StunMessageType Type => StunMessageType.FromWire(BinaryPrimitives.ReadUInt16BigEndian(_data));

    /// <summary>The whole message as received.</summary>
    public ReadOnlySpan<byte> Raw => _data;

    /// <summary>False for RFC 3489 messages, whose bytes 4..7 are part of a 128-bit transaction id.</summary>
    public bool HasMagicCookie => BinaryPrimitives.ReadUInt32BigEndian(_data[4..]) == StunConstants.MagicCookie;

    /// <summary>The 96-bit transaction id (bytes 8..19).</summary>
    public StunTransactionId TransactionId => StunTransactionId.Read(_data[8..]);

    /// <summary>Whether a valid FINGERPRINT ends the message (it was checked while parsing).</summary>
    public bool HasFingerprint => _fingerprintOffset >= 0;

    /// <summary>Whether MESSAGE-INTEGRITY is present (not yet verified).</summary>
    public bool HasMessageIntegrity => _integrityOffset >= 0;

    /// <summary>Whether MESSAGE-INTEGRITY-SHA256 is present (not yet verified).</summary>
    public bool HasMessageIntegritySha256 => _integritySha256Offset >= 0;

    /// <summary>Validates a datagram as one STUN message; never throws, whatever the bytes.</summary>
    public static bool TryParse(ReadOnlySpan<byte> data, out StunMessage message, out StunParseError error)
    {
        message = default;
        error = Validate(data, out int mi, out int mi256, out int fp, out int coveredEnd);
        if (error != StunParseError.None)
        {
            return false;
        }

        message = new StunMessage(data, mi, mi256, fp, coveredEnd);
        return true;
    }

    /// <summary>Whether this implementation knows the attribute type (so it never triggers a 420).</summary>
    public static bool IsKnownAttribute(ushort type) => Enum.IsDefined((StunAttributeType)type);

    /// <summary>Whether an attribute type is comprehension-required (0x0000-0x7FFF).</summary>
    public static bool IsComprehensionRequired(ushort type) => type < 0x8000;

    /// <summary>Enumerates every attribute as it appears on the wire, including any after MESSAGE-INTEGRITY.</summary>
    public StunAttributeEnumerator GetAttributes() => new(_data);

    /// <summary>Finds the first attribute of a type among those the integrity covers.</summary>
    public bool TryGetAttribute(StunAttributeType type, out ReadOnlySpan<byte> value) => TryGetAttribute((ushort)type, out value);

    /// <summary>Finds the first attribute of a raw type among those the integrity covers.</summary>
    public bool TryGetAttribute(ushort type, out ReadOnlySpan<byte> value)
    {
        if (type is (ushort)StunAttributeType.MessageIntegrity or (ushort)StunAttributeType.MessageIntegritySha256 or (ushort)StunAttributeType.Fingerprint)
        {
            int offset = type switch
            {
                (ushort)StunAttributeType.MessageIntegrity => _integrityOffset,
                (ushort)StunAttributeType.MessageIntegritySha256 => _integritySha256Offset,
                _ => _fingerprintOffset,
            };
            if (offset < 0)
            {
                value = default;
                return false;
            }

            value = _data.Slice(offset + 4, BinaryPrimitives.ReadUInt16BigEndian(_data[(offset + 2)..]));
            return true;
        }

        var e = new StunAttributeEnumerator(_data[.._coveredEnd]);
        while (e.MoveNext())
        {
            if (e.Current.Type == type)
            {
                value = e.Current.Value;
                return true;
            }
        }

        value = default;
        return false;
    }

    /// <summary>Reads XOR-MAPPED-ADDRESS.</summary>
    public bool TryGetXorMappedAddress([NotNullWhen(true)] out IPEndPoint? endPoint)
    {
        endPoint = null;
        return TryGetAttribute(StunAttributeType.XorMappedAddress, out var value)
            && StunAddress.TryDecode(value, _data.Slice(4, 16), out endPoint);
    }

    /// <summary>Reads MAPPED-ADDRESS.</summary>
    public bool TryGetMappedAddress([NotNullWhen(true)] out IPEndPoint? endPoint)
    {
        endPoint = null;
        return TryGetAttribute(StunAttributeType.MappedAddress, out var value)
            && StunAddress.TryDecode(value, default, out endPoint);
    }

    /// <summary>Reads USERNAME as UTF-8.</summary>
    public bool TryGetUsername([NotNullWhen(true)] out string? username) => TryGetString(StunAttributeType.Username, out username);

    /// <summary>Reads SOFTWARE as UTF-8.</summary>
    public bool TryGetSoftware([NotNullWhen(true)] out string? software) => TryGetString(StunAttributeType.Software, out software);

    /// <summary>Reads ERROR-CODE as a three-digit code and its reason phrase.</summary>
    public bool TryGetErrorCode(out int code, [NotNullWhen(true)] out string? reason)
    {
        code = 0;
        reason = null;
        if (!TryGetAttribute(StunAttributeType.ErrorCode, out var value))
        {
            return false;
        }

        code = ((value[2] & 0x07) * 100) + value[3];
        reason = Encoding.UTF8.GetString(value[4..]);
        return true;
    }

    /// <summary>Copies the UNKNOWN-ATTRIBUTES list; returns how many types were written.</summary>
    public int GetUnknownAttributes(Span<ushort> destination)
    {
        if (!TryGetAttribute(StunAttributeType.UnknownAttributes, out var value))
        {
            return 0;
        }

        int count = Math.Min(value.Length / 2, destination.Length);
        for (int i = 0; i < count; i++)
        {
            destination[i] = BinaryPrimitives.ReadUInt16BigEndian(value[(i * 2)..]);
        }

        return count;
    }

    /// <summary>Collects comprehension-required attribute types this codec does not know; returns how many were written.</summary>
    public int GetUnknownComprehensionRequired(Span<ushort> destination)
    {
        int count = 0;
        var e = new StunAttributeEnumerator(_data[.._coveredEnd]);
        while (e.MoveNext() && count < destination.Length)
        {
            ushort type = e.Current.Type;
            if (IsComprehensionRequired(type) && !IsKnownAttribute(type) && !destination[..count].Contains(type))
            {
                destination[count++] = type;
            }
        }

        return count;
    }

    /// <summary>Reads the ICE PRIORITY.</summary>
    public bool TryGetPriority(out uint priority)
    {
        priority = 0;
        if (!TryGetAttribute(StunAttributeType.Priority, out var value))
        {
            return false;
        }

        priority = BinaryPrimitives.ReadUInt32BigEndian(value);
        return true;
    }

    /// <summary>Whether the ICE USE-CANDIDATE flag is present.</summary>
    public bool HasUseCandidate => TryGetAttribute(StunAttributeType.UseCandidate, out _);

    /// <summary>Reads the ICE-CONTROLLED tie-breaker.</summary>
    public bool TryGetIceControlled(out ulong tieBreaker) => TryGetUInt64(StunAttributeType.IceControlled, out tieBreaker);

    /// <summary>Reads the ICE-CONTROLLING tie-breaker.</summary>
    public bool TryGetIceControlling(out ulong tieBreaker) => TryGetUInt64(StunAttributeType.IceControlling, out tieBreaker);

    /// <summary>Checks MESSAGE-INTEGRITY (HMAC-SHA1) with a key; false when absent or wrong.</summary>
    /// <param name="key">For short-term credentials, the UTF-8 password (see <see cref="StunCredentials"/>).</param>
    public bool VerifyMessageIntegrity(ReadOnlySpan<byte> key)
    {
        if (_integrityOffset < 0)
        {
            return false;
        }

        Span<byte> mac = stackalloc byte[HMACSHA1.HashSizeInBytes];
        ComputeIntegrity(_data[.._integrityOffset], StunConstants.MessageIntegrityLength, key, sha256: false, mac);
        return CryptographicOperations.FixedTimeEquals(mac, _data.Slice(_integrityOffset + 4, StunConstants.MessageIntegrityLength));
    }

    /// <summary>Checks MESSAGE-INTEGRITY-SHA256 (possibly truncated) with a key; false when absent or wrong.</summary>
    public bool VerifyMessageIntegritySha256(ReadOnlySpan<byte> key)
    {
        if (_integritySha256Offset < 0)
        {
            return false;
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(_data[(_integritySha256Offset + 2)..]);
        Span<byte> mac = stackalloc byte[HMACSHA256.HashSizeInBytes];
        ComputeIntegrity(_data[.._integritySha256Offset], length, key, sha256: true, mac);
        return CryptographicOperations.FixedTimeEquals(mac[..length], _data.Slice(_integritySha256Offset + 4, length));
    }

    /// <summary>
    /// HMAC over the message up to an integrity attribute, with the header length rewritten to end
    /// just after that attribute (RFC 8489 sections 14.5 and 14.6).
    /// </summary>
    internal static void ComputeIntegrity(ReadOnlySpan<byte> prefix, int macLength, ReadOnlySpan<byte> key, bool sha256, Span<byte> mac)
    {
        byte[] rented = ArrayPool<byte>.Shared.Rent(prefix.Length);
        try
        {
            Span<byte> copy = rented.AsSpan(0, prefix.Length);
            prefix.CopyTo(copy);
            BinaryPrimitives.WriteUInt16BigEndian(copy[2..], (ushort)(prefix.Length - StunConstants.HeaderLength + 4 + macLength));
            if (sha256)
            {
                HMACSHA256.HashData(key, copy, mac);
            }
            else
            {
                HMACSHA1.HashData(key, copy, mac);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    internal static uint ComputeFingerprint(ReadOnlySpan<byte> prefix) => StunCrc32.Compute(prefix) ^ StunConstants.FingerprintXor;

    private bool TryGetString(StunAttributeType type, [NotNullWhen(true)] out string? text)
    {
        text = null;
        if (!TryGetAttribute(type, out var value))
        {
            return false;
        }

        text = Encoding.UTF8.GetString(value);
        return true;
    }

    private bool TryGetUInt64(StunAttributeType type, out ulong number)
    {
        number = 0;
        if (!TryGetAttribute(type, out var value))
        {
            return false;
        }

        number = BinaryPrimitives.ReadUInt64BigEndian(value);
        return true;
    }

    private static StunParseError Validate(ReadOnlySpan<byte> data, out int mi, out int mi256, out int fp, out int coveredEnd)
    {
        mi = mi256 = fp = -1;
        coveredEnd = 0;
        if (data.Length < StunConstants.HeaderLength)
        {
            return StunParseError.TooShort;
        }

        if ((data[0] & 0xC0) != 0)
        {
            return StunParseError.NotStun;
        }

        int declared = BinaryPrimitives.ReadUInt16BigEndian(data[2..]);
        if ((declared & 3) != 0)
        {
            return StunParseError.LengthNotAligned;
        }

        int total = StunConstants.HeaderLength + declared;
        if (total > data.Length)
        {
            return StunParseError.Truncated;
        }

        if (total < data.Length)
        {
            return StunParseError.TrailingBytes;
        }

        bool cookie = BinaryPrimitives.ReadUInt32BigEndian(data[4..]) == StunConstants.MagicCookie;
        coveredEnd = total;
        int offset = StunConstants.HeaderLength;
        while (offset < total)
        {
            if (fp >= 0)
            {
                return StunParseError.AttributeAfterFingerprint;
            }

            if (total - offset < 4)
            {
                return StunParseError.AttributeOverrun;
            }

            ushort type = BinaryPrimitives.ReadUInt16BigEndian(data[offset..]);
            int length = BinaryPrimitives.ReadUInt16BigEndian(data[(offset + 2)..]);
            int padded = (length + 3) & ~3;
            if (padded > total - offset - 4)
            {
                return StunParseError.AttributeOverrun;
            }

            var value = data.Slice(offset + 4, length);
            bool afterIntegrity = mi >= 0 || mi256 >= 0;
            switch ((StunAttributeType)type)
            {
                case StunAttributeType.MessageIntegrity when cookie:
                    if (length != StunConstants.MessageIntegrityLength)
                    {
                        return StunParseError.InvalidAttribute;
                    }

                    if (!afterIntegrity)
                    {
                        mi = offset;
                        coveredEnd = Math.Min(coveredEnd, offset);
                    }

                    break;
                case StunAttributeType.MessageIntegritySha256 when cookie:
                    if (length is < 16 or > 32 || (length & 3) != 0)
                    {
                        return StunParseError.InvalidAttribute;
                    }

                    if (mi256 < 0)
                    {
                        mi256 = offset;
                        coveredEnd = Math.Min(coveredEnd, offset);
                    }

                    break;
                case StunAttributeType.Fingerprint when cookie:
                    if (length != 4)
                    {
                        return StunParseError.InvalidAttribute;
                    }

                    if (BinaryPrimitives.ReadUInt32BigEndian(value) != ComputeFingerprint(data[..offset]))
                    {
                        return StunParseError.BadFingerprint;
                    }

                    fp = offset;
                    coveredEnd = Math.Min(coveredEnd, offset);
                    break;
                default:
                    // Values after MESSAGE-INTEGRITY are ignored, so their shape does not matter.
                    if (!afterIntegrity && !IsValueWellFormed(type, value))
                    {
                        return StunParseError.InvalidAttribute;
                    }

                    break;
            }

            offset += 4 + padded;
        }

        return StunParseError.None;
    }

    private static bool IsValueWellFormed(ushort type, ReadOnlySpan<byte> value) => (StunAttributeType)type switch
    {
        StunAttributeType.MappedAddress or StunAttributeType.XorMappedAddress or StunAttributeType.AlternateServer
            => StunAddress.IsWellFormed(value),
        StunAttributeType.Username => value.Length <= StunConstants.MaxUsernameBytes,
        StunAttributeType.ErrorCode => value.Length >= 4 && value.Length <= 4 + StunConstants.MaxReasonBytes,
        StunAttributeType.UnknownAttributes => (value.Length & 1) == 0,
        StunAttributeType.Software => value.Length <= StunConstants.MaxSoftwareBytes,
        StunAttributeType.Priority => value.Length == 4,
        StunAttributeType.UseCandidate => value.Length == 0,
        StunAttributeType.IceControlled or StunAttributeType.IceControlling => value.Length == 8,
        _ => true,
    };
}

/// <summary>One attribute of a STUN message: its raw type and unpadded value.</summary>
public readonly ref struct StunAttribute
{
    internal StunAttribute(ushort type, ReadOnlySpan<byte> value)
    {
        Type = type;
        Value = value;
    }

    /// <summary>The raw attribute type.</summary>
    public ushort Type { get; }

    /// <summary>The value without padding.</summary>
    public ReadOnlySpan<byte> Value { get; }
}

/// <summary>Walks the attributes of an already validated message.</summary>
public ref struct StunAttributeEnumerator
{
    private readonly ReadOnlySpan<byte> _data;
    private int _next;

    internal StunAttributeEnumerator(ReadOnlySpan<byte> data)
    {
        _data = data;
        _next = StunConstants.HeaderLength;
        Current = default;
    }

    /// <summary>The attribute the enumerator is on.</summary>
    public StunAttribute Current { get; private set; }

    /// <summary>Lets <c>foreach</c> use the enumerator.</summary>
    public readonly StunAttributeEnumerator GetEnumerator() => this;

    /// <summary>Moves to the next attribute; stops at anything malformed.</summary>
    public bool MoveNext()
    {
        if (_next + 4 > _data.Length)
        {
            return false;
        }

        ushort type = BinaryPrimitives.ReadUInt16BigEndian(_data[_next..]);
        int length = BinaryPrimitives.ReadUInt16BigEndian(_data[(_next + 2)..]);
        if (length > _data.Length - _next - 4)
        {
            return false;
        }

        Current = new StunAttribute(type, _data.Slice(_next + 4, length));
        _next += 4 + ((length + 3) & ~3);
        return true;
    }
}

/// <summary>Encoding and decoding of the address attributes.</summary>
internal static class StunAddress
{
    public const byte FamilyIPv4 = 0x01;
    public const byte FamilyIPv6 = 0x02;

    public static bool IsWellFormed(ReadOnlySpan<byte> value) =>
        (value.Length == 8 && value[1] == FamilyIPv4) || (value.Length == 20 && value[1] == FamilyIPv6);

    /// <summary>Decodes an address value; a non-empty <paramref name="xorMask"/> (cookie and transaction id) undoes the XOR.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> value, ReadOnlySpan<byte> xorMask, [NotNullWhen(true)] out IPEndPoint? endPoint)
    {
        endPoint = null;
        if (!IsWellFormed(value))
        {
            return false;
        }

        int addressLength = value[1] == FamilyIPv4 ? 4 : 16;
        Span<byte> address = stackalloc byte[16];
        address = address[..addressLength];
        value.Slice(4, addressLength).CopyTo(address);
        ushort port = BinaryPrimitives.ReadUInt16BigEndian(value[2..]);
        if (!xorMask.IsEmpty)
        {
            port ^= (ushort)(StunConstants.MagicCookie >> 16);
            for (int i = 0; i < addressLength; i++)
            {
                address[i] ^= xorMask[i];
            }
        }

        endPoint = new IPEndPoint(new IPAddress(address), port);
        return true;
    }

    /// <summary>Writes an address value (8 or 20 bytes); a non-empty mask XORs it.</summary>
    public static int Encode(Span<byte> destination, ReadOnlySpan<byte> address, ushort port, ReadOnlySpan<byte> xorMask)
    {
        destination[0] = 0;
        destination[1] = address.Length == 4 ? FamilyIPv4 : FamilyIPv6;
        if (!xorMask.IsEmpty)
        {
            port ^= (ushort)(StunConstants.MagicCookie >> 16);
        }

        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], port);
        for (int i = 0; i < address.Length; i++)
        {
            destination[4 + i] = xorMask.IsEmpty ? address[i] : (byte)(address[i] ^ xorMask[i]);
        }

        return 4 + address.Length;
    }

    /// <summary>Writes the address bytes of an endpoint, turning IPv4-mapped IPv6 into plain IPv4.</summary>
    public static int GetAddressBytes(IPAddress address, Span<byte> destination)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (!address.TryWriteBytes(destination, out int written) || (address.AddressFamily != AddressFamily.InterNetwork && address.AddressFamily != AddressFamily.InterNetworkV6))
        {
            throw new ArgumentException("Only IPv4 and IPv6 addresses can be encoded.", nameof(address));
        }

        return written;
    }
}
