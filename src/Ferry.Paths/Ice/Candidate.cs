using System.Globalization;
using System.Net;
using Ferry.Core.ControlPlane;

namespace Ferry.Paths.Ice;

/// <summary>How a candidate address was learned (RFC 8445 §5.1.1); a relayed path needs no address, it is the relay ticket.</summary>
public enum CandidateKind
{
    /// <summary>An address of one of the host's own interfaces.</summary>
    Host,

    /// <summary>The host's NAT as a relay's STUN server saw it.</summary>
    ServerReflexive,

    /// <summary>An address the peer's checks came from that no signaling named (a NAT that maps per destination).</summary>
    PeerReflexive,
}

/// <summary>One address a peer's data-plane socket may be reached at, with its ICE priority.</summary>
public sealed record Candidate(CandidateKind Kind, IPEndPoint EndPoint, uint Priority)
{
    /// <summary>RFC 8445 §5.1.2.1: type preference first, then the local preference among addresses of that type; one component.</summary>
    public static uint PriorityOf(CandidateKind kind, int localPreference)
        => ((uint)TypePreference(kind) << 24) | ((uint)Math.Clamp(localPreference, 0, 65535) << 8) | 255;

    private static int TypePreference(CandidateKind kind) => kind switch
    {
        CandidateKind.Host => 126,
        CandidateKind.PeerReflexive => 110,
        _ => 100,
    };

    /// <summary>The wire name ("host", "srflx", "prflx").</summary>
    public string KindName => Kind switch
    {
        CandidateKind.Host => "host",
        CandidateKind.ServerReflexive => "srflx",
        _ => "prflx",
    };

    /// <summary>As signaling carries it.</summary>
    public CandidateInfo ToInfo() => new(KindName, EndPoint.ToString(), Priority);

    /// <summary>Reads a signaled candidate; false (and nothing else) for anything malformed, so a bad peer cannot break the session.</summary>
    public static bool TryParse(CandidateInfo? info, out Candidate? candidate)
    {
        candidate = null;
        if (info is null || !IPEndPoint.TryParse(info.Address ?? "", out var endPoint) || endPoint.Port == 0)
        {
            return false;
        }
        CandidateKind? kind = info.Kind switch
        {
            "host" => CandidateKind.Host,
            "srflx" => CandidateKind.ServerReflexive,
            "prflx" => CandidateKind.PeerReflexive,
            _ => null,
        };
        if (kind is null)
        {
            return false;
        }
        candidate = new Candidate(kind.Value, endPoint, info.Priority);
        return true;
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{KindName} {EndPoint}");
}
