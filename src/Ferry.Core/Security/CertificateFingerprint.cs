using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Core.Security;

/// <summary>SHA-256 certificate fingerprints in the "sha256:hex" form that operators paste into --controller-fingerprint.</summary>
public static class CertificateFingerprint
{
    public static string Of(X509Certificate certificate)
        => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(certificate.GetRawCertData()));

    /// <summary>Normalises what an operator typed: optional "sha256:" prefix, colons or not, any case.</summary>
    public static bool TryNormalize(string text, out string normalized, out string error)
    {
        normalized = "";
        var value = text.Trim();
        if (value.StartsWith("sha256:", StringComparison.OrdinalIgnoreCase))
        {
            value = value["sha256:".Length..];
        }
        value = value.Replace(":", "", StringComparison.Ordinal).ToLowerInvariant();
        if (value.Length != 64 || !value.All(Uri.IsHexDigit))
        {
            error = $"'{text}' is not a SHA-256 fingerprint: expected 'sha256:' followed by 64 hex digits, as printed by 'ferry controller' at start";
            return false;
        }
        normalized = "sha256:" + value;
        error = "";
        return true;
    }
}
