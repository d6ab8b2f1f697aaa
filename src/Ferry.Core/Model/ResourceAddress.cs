using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Ferry.Core.Model;

/// <summary>What a resource names: a DNS name, a "*." wildcard name, one IP address, or a CIDR block.</summary>
public enum ResourceAddressKind
{
    DnsName,
    Wildcard,
    Ip,
    Cidr,
}

/// <summary>A validated resource address that can tell whether a flow's destination falls under it and how specific it is.</summary>
public sealed class ResourceAddress
{
    private readonly IPAddress? _network;
    private readonly int _prefixLength;

    private ResourceAddress(ResourceAddressKind kind, string canonical, IPAddress? network, int prefixLength)
    {
        Kind = kind;
        Canonical = canonical;
        _network = network;
        _prefixLength = prefixLength;
    }

    public ResourceAddressKind Kind { get; }

    /// <summary>True for an IP or CIDR that reaches a public address; only an exit network may hold such a resource. Names are judged when the connector resolves them.</summary>
    public bool IsPublic => _network is not null && Ferry.Core.Flows.PublicAddresses.ReachesPublic(_network, _prefixLength);

    /// <summary>The normalised text: lower-case names, CIDRs with host bits cleared.</summary>
    public string Canonical { get; }

    public string KindName => Kind switch
    {
        ResourceAddressKind.DnsName => "dns",
        ResourceAddressKind.Wildcard => "wildcard",
        ResourceAddressKind.Ip => "ip",
        _ => "cidr",
    };

    public static bool TryParse(string? text, [NotNullWhen(true)] out ResourceAddress? address, out string error)
    {
        address = null;
        error = "";
        var value = text?.Trim() ?? "";
        if (value.Length == 0)
        {
            error = "address is empty: give a DNS name (db.internal), a wildcard (*.corp.internal), an IP address or a CIDR (10.0.0.0/24)";
            return false;
        }
        var slash = value.IndexOf('/', StringComparison.Ordinal);
        if (slash >= 0)
        {
            return TryParseCidr(value, slash, out address, out error);
        }
        if (IPAddress.TryParse(value, out var ip) && (value.Contains(':', StringComparison.Ordinal) || value.Count(c => c == '.') == 3))
        {
            address = new ResourceAddress(ResourceAddressKind.Ip, ip.ToString(), ip, ip.AddressFamily == AddressFamily.InterNetwork ? 32 : 128);
            return true;
        }
        var wildcard = value.StartsWith("*.", StringComparison.Ordinal);
        var name = (wildcard ? value[2..] : value).TrimEnd('.').ToLowerInvariant();
        if (!IsValidDnsName(name, out var why))
        {
            error = $"'{value}' is not a valid address: {why}";
            return false;
        }
        if (name.Contains('*', StringComparison.Ordinal))
        {
            error = $"'{value}' is not a valid address: a wildcard may only stand first, as in '*.corp.internal'";
            return false;
        }
        address = wildcard
            ? new ResourceAddress(ResourceAddressKind.Wildcard, "*." + name, null, 0)
            : new ResourceAddress(ResourceAddressKind.DnsName, name, null, 0);
        return true;
    }

    private static bool TryParseCidr(string value, int slash, [NotNullWhen(true)] out ResourceAddress? address, out string error)
    {
        address = null;
        var ipText = value[..slash];
        var prefixText = value[(slash + 1)..];
        if (!IPAddress.TryParse(ipText, out var ip) || (ip.AddressFamily == AddressFamily.InterNetwork && ipText.Count(c => c == '.') != 3))
        {
            error = $"'{value}' is not a valid CIDR: '{ipText}' is not an IP address";
            return false;
        }
        var max = ip.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        if (!int.TryParse(prefixText, NumberStyles.None, CultureInfo.InvariantCulture, out var prefix) || prefix > max)
        {
            error = $"'{value}' is not a valid CIDR: the prefix length must be a number from 0 to {max}";
            return false;
        }
        var network = Mask(ip, prefix);
        address = new ResourceAddress(ResourceAddressKind.Cidr, $"{network}/{prefix}", network, prefix);
        error = "";
        return true;
    }

    private static bool IsValidDnsName(string name, out string why)
    {
        why = "";
        if (name.Length is 0 or > 253)
        {
            why = "a DNS name must be 1 to 253 characters";
            return false;
        }
        foreach (var label in name.Split('.'))
        {
            if (label.Length is 0 or > 63)
            {
                why = "each dot-separated label must be 1 to 63 characters";
                return false;
            }
            if (label[0] == '-' || label[^1] == '-')
            {
                why = $"label '{label}' may not start or end with '-'";
                return false;
            }
            foreach (var c in label)
            {
                if (!(char.IsAsciiLetterOrDigit(c) || c == '-' || c == '_' || c == '*'))
                {
                    why = $"'{c}' is not allowed in a DNS name (letters, digits, '-' and '_' only)";
                    return false;
                }
            }
        }
        if (name.All(c => char.IsAsciiDigit(c) || c == '.'))
        {
            why = "it looks like an IPv4 address but is not one";
            return false;
        }
        return true;
    }

    /// <summary>Whether a destination (a name or an IP literal) is covered by this address.</summary>
    public bool Matches(string host)
    {
        if (IPAddress.TryParse(host, out var ip))
        {
            return Matches(ip);
        }
        var name = host.TrimEnd('.').ToLowerInvariant();
        return Kind switch
        {
            ResourceAddressKind.DnsName => name == Canonical,
            // "*.corp.internal" covers "a.corp.internal" and "a.b.corp.internal", not "corp.internal" itself.
            ResourceAddressKind.Wildcard => name.EndsWith(Canonical[1..], StringComparison.Ordinal),
            _ => false,
        };
    }

    public bool Matches(IPAddress ip)
    {
        if (_network is null)
        {
            return false;
        }
        if (ip.IsIPv4MappedToIPv6)
        {
            ip = ip.MapToIPv4();
        }
        return ip.AddressFamily == _network.AddressFamily && Mask(ip, _prefixLength).Equals(_network);
    }

    /// <summary>Higher is more specific: an exact name beats a wildcard (longer suffix first), and a single IP beats a smaller CIDR beats a larger one.</summary>
    public int Specificity => Kind switch
    {
        ResourceAddressKind.DnsName => 100_000,
        ResourceAddressKind.Wildcard => 50_000 + Canonical.Length,
        ResourceAddressKind.Ip => 100_000,
        _ => _prefixLength * 100,
    };

    private static IPAddress Mask(IPAddress ip, int prefix)
    {
        var bytes = ip.GetAddressBytes();
        for (var i = 0; i < bytes.Length; i++)
        {
            var bits = Math.Clamp(prefix - (i * 8), 0, 8);
            bytes[i] &= (byte)(0xFF << (8 - bits));
        }
        return new IPAddress(bytes);
    }

    public override string ToString() => Canonical;
}
