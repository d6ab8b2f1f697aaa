using System.Buffers.Binary;
using System.Buffers.Text;
using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using System.Text;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>A short-lived, CA-signed permission for two named peers to exchange packets through a relay.</summary>
/// <remarks>
/// Binary form (big-endian): version u8 | id 16 bytes | notAfter i64 unix seconds | lenA u8 | peerA | lenB u8 | peerB | signature 64 bytes.
/// The peers are stored in ordinal order so a ticket for (A, B) and one for (B, A) are the same ticket. The signature is
/// ECDSA P-256 / SHA-256 in IEEE P1363 form (fixed 64 bytes) over a domain label followed by everything before it: the CA
/// key also signs certificates, and the label keeps a ticket signature from ever being mistaken for anything else.
/// </remarks>
public sealed class RelayTicket
{
    /// <summary>The only encoding version this code issues and accepts.</summary>
    public const byte CurrentVersion = 1;

    /// <summary>Clock tolerance applied to the expiry, matching the deployment's ±5 s rule.</summary>
    public static readonly TimeSpan ClockTolerance = TimeSpan.FromSeconds(5);

    /// <summary>Longest accepted text form; larger input is refused before decoding.</summary>
    public const int MaxTextLength = 1024;

    internal const int IdLength = 16;
    internal const int SignatureLength = 64;
    private const int FixedHeaderLength = 1 + IdLength + 8;
    private static readonly System.Buffers.SearchValues<char> s_base64UrlAlphabet =
        System.Buffers.SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");
    private static readonly byte[] s_domainLabel = Encoding.ASCII.GetBytes("ferry relay ticket v1\0");

    private RelayTicket(byte[] id, string peerA, string peerB, DateTimeOffset notAfter, string text)
    {
        _id = id;
        PeerA = peerA;
        PeerB = peerB;
        NotAfter = notAfter;
        Text = text;
    }

    private readonly byte[] _id;

    /// <summary>The ordinally smaller of the two peer identities.</summary>
    public string PeerA { get; }

    /// <summary>The ordinally larger of the two peer identities.</summary>
    public string PeerB { get; }

    /// <summary>End of validity (whole seconds).</summary>
    public DateTimeOffset NotAfter { get; }

    /// <summary>The random ticket id as lowercase hex, for logs and audit.</summary>
    public string Id => Convert.ToHexStringLower(_id);

    /// <summary>The base64url text form, as handed to peers and presented to relays.</summary>
    public string Text { get; }

    /// <summary>True when <paramref name="identity"/> is one of the two named peers.</summary>
    public bool Names(string identity) => string.Equals(identity, PeerA, StringComparison.Ordinal) || string.Equals(identity, PeerB, StringComparison.Ordinal);

    /// <summary>The peer at the other end from <paramref name="identity"/>, or null when the ticket does not name it.</summary>
    public string? OtherPeer(string identity) =>
        string.Equals(identity, PeerA, StringComparison.Ordinal) ? PeerB :
        string.Equals(identity, PeerB, StringComparison.Ordinal) ? PeerA : null;

    /// <summary>True when the ticket is still valid at <paramref name="now"/>, allowing <see cref="ClockTolerance"/>.</summary>
    // The tolerance goes on the side of now: NotAfter may be as late as DateTimeOffset.MaxValue, and adding to it would throw.
    public bool IsValidAt(DateTimeOffset now) => now - ClockTolerance <= NotAfter;

    /// <inheritdoc />
    public override string ToString() => Text;

    /// <summary>Issues a ticket for the pair (<paramref name="peerA"/>, <paramref name="peerB"/>) signed with the CA key.</summary>
    public static RelayTicket Issue(ECDsa signer, string peerA, string peerB, DateTimeOffset notAfter)
    {
        ArgumentNullException.ThrowIfNull(signer);
        if (!PeerIdentity.IsValid(peerA))
        {
            throw new ArgumentException($"'{peerA}' is not a peer identity of the form kind/id.", nameof(peerA));
        }

        if (!PeerIdentity.IsValid(peerB))
        {
            throw new ArgumentException($"'{peerB}' is not a peer identity of the form kind/id.", nameof(peerB));
        }

        if (string.Equals(peerA, peerB, StringComparison.Ordinal))
        {
            throw new ArgumentException("A ticket names two different peers.", nameof(peerB));
        }

        if (signer.KeySize != 256)
        {
            throw new ArgumentException("Tickets are signed with an ECDSA P-256 key.", nameof(signer));
        }

        if (string.CompareOrdinal(peerA, peerB) > 0)
        {
            (peerA, peerB) = (peerB, peerA);
        }

        var seconds = notAfter.ToUnixTimeSeconds();
        var lenA = PeerIdentity.ByteCount(peerA);
        var lenB = PeerIdentity.ByteCount(peerB);
        var bodyLength = FixedHeaderLength + 1 + lenA + 1 + lenB;
        var bytes = new byte[bodyLength + SignatureLength];
        var span = bytes.AsSpan();
        span[0] = CurrentVersion;
        RandomNumberGenerator.Fill(span.Slice(1, IdLength));
        BinaryPrimitives.WriteInt64BigEndian(span.Slice(1 + IdLength, 8), seconds);
        var at = FixedHeaderLength;
        span[at++] = (byte)lenA;
        at += Encoding.ASCII.GetBytes(peerA, span[at..]);
        span[at++] = (byte)lenB;
        at += Encoding.ASCII.GetBytes(peerB, span[at..]);

        var signed = SignedData(span[..bodyLength]);
        if (!signer.TrySignData(signed, span[bodyLength..], HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation, out var written)
            || written != SignatureLength)
        {
            throw new CryptographicException("The CA key did not produce a P-256 signature.");
        }

        return new RelayTicket(span.Slice(1, IdLength).ToArray(), peerA, peerB, DateTimeOffset.FromUnixTimeSeconds(seconds), Base64Url.EncodeToString(bytes));
    }

    /// <summary>Verifies a ticket's text form: encoding, CA signature and expiry (±5 s). Never throws on bad input.</summary>
    public static bool TryVerify(string text, ECDsa caPublicKey, TimeProvider clock, [NotNullWhen(true)] out RelayTicket? ticket, out string error)
    {
        var refusal = Verify(text, caPublicKey, clock, out ticket, out error);
        return refusal == RelayRefusal.None;
    }

    /// <summary>As <see cref="TryVerify"/>, and also requires <paramref name="presenter"/> to be one of the named peers.</summary>
    public static bool TryVerifyFor(string text, string presenter, ECDsa caPublicKey, TimeProvider clock, [NotNullWhen(true)] out RelayTicket? ticket, out string error) =>
        VerifyFor(text, presenter, caPublicKey, clock, out ticket, out error) == RelayRefusal.None;

    internal static RelayRefusal VerifyFor(string text, string presenter, ECDsa caPublicKey, TimeProvider clock, out RelayTicket? ticket, out string error)
    {
        var refusal = Verify(text, caPublicKey, clock, out ticket, out error);
        if (refusal != RelayRefusal.None)
        {
            return refusal;
        }

        if (!ticket!.Names(presenter))
        {
            error = $"ticket {ticket.Id} names {ticket.PeerA} and {ticket.PeerB}, not the presenter {presenter}";
            ticket = null;
            return RelayRefusal.TicketNotForPresenter;
        }

        return RelayRefusal.None;
    }

    internal static RelayRefusal Verify(string text, ECDsa caPublicKey, TimeProvider clock, out RelayTicket? ticket, out string error)
    {
        ArgumentNullException.ThrowIfNull(caPublicKey);
        ArgumentNullException.ThrowIfNull(clock);
        ticket = null;
        if (string.IsNullOrEmpty(text) || text.Length > MaxTextLength)
        {
            error = "malformed ticket: empty or too long";
            return RelayRefusal.TicketMalformed;
        }

        // The decoder skips whitespace and takes padding; refusing both keeps one text per ticket, as issued.
        if (text.AsSpan().ContainsAnyExcept(s_base64UrlAlphabet))
        {
            error = "malformed ticket: not base64url";
            return RelayRefusal.TicketMalformed;
        }

        Span<byte> bytes = stackalloc byte[MaxTextLength];
        if (Base64Url.DecodeFromChars(text, bytes, out var consumed, out var length) != System.Buffers.OperationStatus.Done || consumed != text.Length)
        {
            error = "malformed ticket: not base64url";
            return RelayRefusal.TicketMalformed;
        }

        bytes = bytes[..length];
        if (!TryParse(bytes, out var id, out var peerA, out var peerB, out var seconds, out var bodyLength, out error))
        {
            return RelayRefusal.TicketMalformed;
        }

        try
        {
            if (!caPublicKey.VerifyData(SignedData(bytes[..bodyLength]), bytes[bodyLength..], HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation))
            {
                error = "ticket signature does not verify against the deployment CA";
                return RelayRefusal.TicketBadSignature;
            }
        }
        catch (CryptographicException)
        {
            error = "ticket signature does not verify against the deployment CA";
            return RelayRefusal.TicketBadSignature;
        }

        var notAfter = DateTimeOffset.FromUnixTimeSeconds(seconds);
        var candidate = new RelayTicket(id, peerA, peerB, notAfter, text);
        var now = clock.GetUtcNow();
        if (!candidate.IsValidAt(now))
        {
            error = $"ticket {candidate.Id} expired at {notAfter:u} (now {now:u})";
            return RelayRefusal.TicketExpired;
        }

        ticket = candidate;
        error = string.Empty;
        return RelayRefusal.None;
    }

    private static bool TryParse(ReadOnlySpan<byte> bytes, out byte[] id, out string peerA, out string peerB, out long seconds, out int bodyLength, out string error)
    {
        id = [];
        peerA = peerB = string.Empty;
        seconds = 0;
        bodyLength = 0;
        if (bytes.Length < FixedHeaderLength + 2 + SignatureLength)
        {
            error = "malformed ticket: too short";
            return false;
        }

        if (bytes[0] != CurrentVersion)
        {
            error = $"malformed ticket: version {bytes[0]} is not supported";
            return false;
        }

        seconds = BinaryPrimitives.ReadInt64BigEndian(bytes.Slice(1 + IdLength, 8));
        if (seconds < 0 || seconds > DateTimeOffset.MaxValue.ToUnixTimeSeconds())
        {
            error = "malformed ticket: expiry out of range";
            return false;
        }

        var at = FixedHeaderLength;
        if (!TryReadIdentity(bytes, ref at, out peerA) || !TryReadIdentity(bytes, ref at, out peerB))
        {
            error = "malformed ticket: bad peer identity";
            return false;
        }

        // Only the canonical order is valid, so every pair has exactly one encoding.
        if (string.CompareOrdinal(peerA, peerB) >= 0)
        {
            error = "malformed ticket: peers not in canonical order";
            return false;
        }

        if (bytes.Length - at != SignatureLength)
        {
            error = "malformed ticket: wrong signature length";
            return false;
        }

        id = bytes.Slice(1, IdLength).ToArray();
        bodyLength = at;
        error = string.Empty;
        return true;
    }

    private static bool TryReadIdentity(ReadOnlySpan<byte> bytes, ref int at, out string identity)
    {
        identity = string.Empty;
        if (at >= bytes.Length)
        {
            return false;
        }

        var length = bytes[at++];
        if (length == 0 || bytes.Length - at < length)
        {
            return false;
        }

        var raw = bytes.Slice(at, length);
        foreach (var b in raw)
        {
            if (b > 0x7e)
            {
                return false;
            }
        }

        identity = Encoding.ASCII.GetString(raw);
        at += length;
        return PeerIdentity.IsValid(identity);
    }

    private static byte[] SignedData(ReadOnlySpan<byte> body)
    {
        var data = new byte[s_domainLabel.Length + body.Length];
        s_domainLabel.CopyTo(data, 0);
        body.CopyTo(data.AsSpan(s_domainLabel.Length));
        return data;
    }
}
