namespace Ferry.Stun;

/// <summary>The class of a STUN message (RFC 8489 section 5).</summary>
public enum StunMessageClass : byte
{
    /// <summary>A request that expects a response.</summary>
    Request = 0,

    /// <summary>A message that expects no response.</summary>
    Indication = 1,

    /// <summary>A success response to a request.</summary>
    SuccessResponse = 2,

    /// <summary>An error response to a request.</summary>
    ErrorResponse = 3,
}

/// <summary>STUN methods Ferry knows by name (RFC 8489 and the IANA registry).</summary>
public enum StunMethod : ushort
{
    /// <summary>Binding: learn the reflexive transport address, and ICE connectivity checks.</summary>
    Binding = 0x001,
}

/// <summary>STUN attribute types Ferry understands (RFC 8489, RFC 8445).</summary>
public enum StunAttributeType : ushort
{
    /// <summary>MAPPED-ADDRESS, the plain reflexive address of RFC 3489 era servers.</summary>
    MappedAddress = 0x0001,

    /// <summary>USERNAME, the credential name for MESSAGE-INTEGRITY.</summary>
    Username = 0x0006,

    /// <summary>MESSAGE-INTEGRITY, HMAC-SHA1 over the message.</summary>
    MessageIntegrity = 0x0008,

    /// <summary>ERROR-CODE, class, number and reason phrase.</summary>
    ErrorCode = 0x0009,

    /// <summary>UNKNOWN-ATTRIBUTES, listed in a 420 response.</summary>
    UnknownAttributes = 0x000A,

    /// <summary>REALM, long-term credentials.</summary>
    Realm = 0x0014,

    /// <summary>NONCE, long-term credentials.</summary>
    Nonce = 0x0015,

    /// <summary>MESSAGE-INTEGRITY-SHA256, HMAC-SHA256 over the message.</summary>
    MessageIntegritySha256 = 0x001C,

    /// <summary>PASSWORD-ALGORITHM, long-term credentials.</summary>
    PasswordAlgorithm = 0x001D,

    /// <summary>USERHASH, long-term credentials.</summary>
    UserHash = 0x001E,

    /// <summary>XOR-MAPPED-ADDRESS, the reflexive address obfuscated against NAT rewriting.</summary>
    XorMappedAddress = 0x0020,

    /// <summary>PRIORITY, the ICE candidate priority.</summary>
    Priority = 0x0024,

    /// <summary>USE-CANDIDATE, ICE nomination flag.</summary>
    UseCandidate = 0x0025,

    /// <summary>PASSWORD-ALGORITHMS, long-term credentials.</summary>
    PasswordAlgorithms = 0x8002,

    /// <summary>ALTERNATE-DOMAIN, sent with ALTERNATE-SERVER.</summary>
    AlternateDomain = 0x8003,

    /// <summary>SOFTWARE, a description of the sending agent.</summary>
    Software = 0x8022,

    /// <summary>ALTERNATE-SERVER, a redirect target.</summary>
    AlternateServer = 0x8023,

    /// <summary>FINGERPRINT, CRC-32 of the message xor 0x5354554E.</summary>
    Fingerprint = 0x8028,

    /// <summary>ICE-CONTROLLED, the tie-breaker of the controlled agent.</summary>
    IceControlled = 0x8029,

    /// <summary>ICE-CONTROLLING, the tie-breaker of the controlling agent.</summary>
    IceControlling = 0x802A,
}

/// <summary>Why <see cref="StunMessage.TryParse"/> refused a datagram.</summary>
public enum StunParseError
{
    /// <summary>The message parsed.</summary>
    None = 0,

    /// <summary>Shorter than the 20-byte header.</summary>
    TooShort,

    /// <summary>The two leading bits are not zero, so it is another protocol.</summary>
    NotStun,

    /// <summary>The header's length field is not a multiple of four.</summary>
    LengthNotAligned,

    /// <summary>The datagram is shorter than the header's length field says.</summary>
    Truncated,

    /// <summary>The datagram carries bytes beyond the header's length field.</summary>
    TrailingBytes,

    /// <summary>An attribute header or value runs past the end of the message.</summary>
    AttributeOverrun,

    /// <summary>A known attribute has a value of the wrong size or shape.</summary>
    InvalidAttribute,

    /// <summary>Something follows FINGERPRINT, which must be last.</summary>
    AttributeAfterFingerprint,

    /// <summary>FINGERPRINT is present and does not match the message.</summary>
    BadFingerprint,
}

/// <summary>The 16-bit STUN message type: a method and a class interleaved.</summary>
public readonly record struct StunMessageType(StunMethod Method, StunMessageClass Class)
{
    /// <summary>Binding request.</summary>
    public static StunMessageType BindingRequest => new(StunMethod.Binding, StunMessageClass.Request);

    /// <summary>Binding success response.</summary>
    public static StunMessageType BindingSuccess => new(StunMethod.Binding, StunMessageClass.SuccessResponse);

    /// <summary>Binding error response.</summary>
    public static StunMessageType BindingError => new(StunMethod.Binding, StunMessageClass.ErrorResponse);

    /// <summary>Binding indication (keepalive).</summary>
    public static StunMessageType BindingIndication => new(StunMethod.Binding, StunMessageClass.Indication);

    /// <summary>Decodes the wire value; the two leading bits are ignored.</summary>
    public static StunMessageType FromWire(ushort value)
    {
        // The class bits C1 and C0 sit at positions 8 and 4, splitting the method in three.
        var cls = (StunMessageClass)(((value >> 7) & 0x2) | ((value >> 4) & 0x1));
        int method = (value & 0x000F) | ((value >> 1) & 0x0070) | ((value >> 2) & 0x0F80);
        return new StunMessageType((StunMethod)method, cls);
    }

    /// <summary>Encodes the wire value.</summary>
    public ushort ToWire()
    {
        int m = (int)Method & 0x0FFF;
        int c = (int)Class;
        int value = (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0x1) << 4) | ((c & 0x2) << 7);
        return (ushort)value;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Method} {Class}";
}
