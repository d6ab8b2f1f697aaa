using System.Net;

namespace Ferry.Stun;

/// <summary>Settings of a <see cref="StunServer"/>.</summary>
public sealed class StunServerOptions
{
    /// <summary>UDP endpoints to bind; port 0 picks a free port (see <see cref="StunServer.LocalEndPoints"/>).</summary>
    public IReadOnlyList<IPEndPoint> EndPoints { get; set; } =
        [new IPEndPoint(IPAddress.Any, StunConstants.DefaultPort), new IPEndPoint(IPAddress.IPv6Any, StunConstants.DefaultPort)];

    /// <summary>Sustained Binding requests per second answered for one source (IPv4 address or IPv6 /64).</summary>
    public double RequestsPerSecondPerSource { get; set; } = 20;

    /// <summary>Requests one source may send in a burst before the sustained rate applies.</summary>
    public double BurstPerSource { get; set; } = 40;

    /// <summary>Most sources tracked by the rate limiter; beyond this, new sources share one bucket.</summary>
    public int MaxTrackedSources { get; set; } = 100_000;
}

/// <summary>Why a <see cref="StunServer"/> sent nothing back for a datagram.</summary>
public enum StunDropReason
{
    /// <summary>Not STUN: too short, or first byte outside 0..3 (RFC 7983).</summary>
    NotStun,

    /// <summary>No magic cookie: an RFC 3489 request, or junk that starts like one.</summary>
    NoMagicCookie,

    /// <summary>A response or an indication, which a server never answers.</summary>
    NotRequest,

    /// <summary>A request for a method other than Binding (RFC 8489 section 6.3: discard).</summary>
    UnsupportedMethod,

    /// <summary>The header's length disagrees with the datagram (RFC 8489 section 6.3: discard).</summary>
    MalformedHeader,

    /// <summary>FINGERPRINT present and wrong (RFC 8489 section 7.3: discard).</summary>
    BadFingerprint,

    /// <summary>The source spent its token bucket.</summary>
    RateLimited,

    /// <summary>The response would have exceeded the amplification bound.</summary>
    AmplificationBound,

    /// <summary>The operating system refused to send the response.</summary>
    SendFailed,

    /// <summary>A bug while handling the datagram; logged, and the loop went on.</summary>
    InternalError,
}

/// <summary>A point-in-time copy of a <see cref="StunServer"/>'s counters.</summary>
public sealed record StunServerStatistics
{
    /// <summary>Datagrams read from the sockets.</summary>
    public long DatagramsReceived { get; init; }

    /// <summary>Binding requests with a sound STUN header, counted before rate limiting and attribute checks.</summary>
    public long RequestsReceived { get; init; }

    /// <summary>Binding success responses sent.</summary>
    public long SuccessResponses { get; init; }

    /// <summary>Error responses (400, 420) sent.</summary>
    public long ErrorResponses { get; init; }

    /// <summary>Every response sent.</summary>
    public long ResponsesSent => SuccessResponses + ErrorResponses;

    /// <summary>Datagrams dropped, per reason.</summary>
    public required IReadOnlyDictionary<StunDropReason, long> Dropped { get; init; }

    /// <summary>Datagrams dropped for any reason.</summary>
    public long TotalDropped => Dropped.Values.Sum();

    /// <summary>Datagrams dropped for one reason.</summary>
    public long DroppedFor(StunDropReason reason) => Dropped.TryGetValue(reason, out long n) ? n : 0;
}
