using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace Ferry.Core.Security;

/// <summary>Who a daemon is: its kind (connector, relay, device) and its id, written "kind/id" and carried as the certificate's common name.</summary>
public readonly record struct PeerIdentity(string Kind, string Id)
{
    public const string Connector = "connector";
    public const string Relay = "relay";
    public const string Device = "device";

    /// <summary>Device certificates carry their owner as a SAN URI with this prefix, e.g. "ferry-owner://user/us_…".</summary>
    public const string OwnerUriPrefix = "ferry-owner://";

    public override string ToString() => $"{Kind}/{Id}";

    /// <summary>The owner ("user/…" or "service-account/…") a device certificate names; connectors enforce policy per owner.</summary>
    public static string? OwnerOf(X509Certificate2 certificate)
    {
        foreach (var extension in certificate.Extensions)
        {
            if (extension.Oid?.Value != "2.5.29.17")
            {
                continue;
            }
            // GeneralNames ::= SEQUENCE OF GeneralName; a URI is [6] IA5String. .NET has no URI enumerator for SANs.
            try
            {
                var names = new System.Formats.Asn1.AsnReader(extension.RawData, System.Formats.Asn1.AsnEncodingRules.DER).ReadSequence();
                var uriTag = new System.Formats.Asn1.Asn1Tag(System.Formats.Asn1.TagClass.ContextSpecific, 6);
                while (names.HasData)
                {
                    if (!names.PeekTag().HasSameClassAndValue(uriTag))
                    {
                        names.ReadEncodedValue();
                        continue;
                    }
                    var text = names.ReadCharacterString(System.Formats.Asn1.UniversalTagNumber.IA5String, uriTag);
                    if (text.StartsWith(OwnerUriPrefix, StringComparison.Ordinal))
                    {
                        return text[OwnerUriPrefix.Length..];
                    }
                }
            }
            catch (System.Formats.Asn1.AsnContentException)
            {
                return null;
            }
        }
        return null;
    }

    public static bool TryParse(string? text, [NotNullWhen(true)] out PeerIdentity? identity)
    {
        identity = null;
        if (!IsValid(text))
        {
            return false;
        }
        var slash = text!.IndexOf('/', StringComparison.Ordinal);
        identity = new PeerIdentity(text[..slash], text[(slash + 1)..]);
        return true;
    }

    /// <summary>Reads the identity from a certificate issued by the deployment's CA.</summary>
    public static bool TryFromCertificate(X509Certificate2 certificate, [NotNullWhen(true)] out PeerIdentity? identity)
        => TryParse(FromCertificate(certificate), out identity);

    /// <summary>Longest identity in UTF-8 bytes; tickets and frames carry it with a one-byte length.</summary>
    public const int MaxLength = 255;

    /// <summary>True when <paramref name="identity"/> is "kind/id" with both parts non-empty, printable ASCII and no more slashes.</summary>
    public static bool IsValid(string? identity)
    {
        if (string.IsNullOrEmpty(identity) || identity.Length > MaxLength)
        {
            return false;
        }

        var slash = -1;
        for (var i = 0; i < identity.Length; i++)
        {
            var c = identity[i];
            if (c == '/')
            {
                if (slash >= 0)
                {
                    return false;
                }

                slash = i;
            }
            else if (c <= ' ' || c > '~')
            {
                // Identities end up in logs and counters; refusing control and non-ASCII characters keeps those unambiguous.
                return false;
            }
        }

        return slash > 0 && slash < identity.Length - 1;
    }

    /// <summary>The kind part of a valid identity ("connector" for "connector/cn_4f2a").</summary>
    public static string KindOf(string identity) => identity[..identity.IndexOf('/', StringComparison.Ordinal)];

    /// <summary>Reads the identity from a certificate's subject CN; null when absent or malformed.</summary>
    public static string? FromCertificate(X509Certificate2 certificate)
    {
        ArgumentNullException.ThrowIfNull(certificate);
        // GetNameInfo(SimpleName) falls back to other attributes when there is no CN, so read the CN itself and insist on one.
        string? cn = null;
        foreach (var rdn in certificate.SubjectName.EnumerateRelativeDistinguishedNames())
        {
            if (rdn.HasMultipleElements || rdn.GetSingleElementType().Value != CommonNameOid)
            {
                continue;
            }

            if (cn is not null)
            {
                return null;
            }

            cn = rdn.GetSingleElementValue();
        }

        return IsValid(cn) ? cn : null;
    }

    private const string CommonNameOid = "2.5.4.3";

    public static int ByteCount(string identity) => Encoding.ASCII.GetByteCount(identity);
}
