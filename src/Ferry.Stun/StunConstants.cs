namespace Ferry.Stun;

/// <summary>Fixed numbers of the STUN wire format.</summary>
public static class StunConstants
{
    /// <summary>The magic cookie RFC 5389 put in bytes 4..7 of every message.</summary>
    public const uint MagicCookie = 0x2112A442;

    /// <summary>Size of the fixed header.</summary>
    public const int HeaderLength = 20;

    /// <summary>Size of a transaction id (RFC 5389 and later).</summary>
    public const int TransactionIdLength = 12;

    /// <summary>The default STUN port over UDP.</summary>
    public const int DefaultPort = 3478;

    /// <summary>The value FINGERPRINT xors into the CRC-32 so STUN is told apart from other CRC users.</summary>
    public const uint FingerprintXor = 0x5354554E;

    /// <summary>Size of an HMAC-SHA1 MESSAGE-INTEGRITY value.</summary>
    public const int MessageIntegrityLength = 20;

    /// <summary>Largest reason phrase in ERROR-CODE, in bytes (RFC 8489 section 14.8).</summary>
    public const int MaxReasonBytes = 763;

    /// <summary>Largest SOFTWARE value, in bytes (RFC 8489 section 14.14).</summary>
    public const int MaxSoftwareBytes = 763;

    /// <summary>Largest USERNAME value, in bytes (RFC 8489 section 14.3).</summary>
    public const int MaxUsernameBytes = 512;
}
