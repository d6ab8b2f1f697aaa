namespace Ferry.Connector.Flows;

/// <summary>Limits of the connector's flow handling.</summary>
public sealed class FlowHandlerOptions
{
    /// <summary>How long resolving and connecting together may take before the flow answers Timeout.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a new stream may take to send its header; a client that stalls is answered ProtocolError.</summary>
    public TimeSpan HeaderTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How many resolved addresses are tried, in order, before giving up.</summary>
    public int MaxAddressesTried { get; init; } = 4;

    /// <summary>A UDP flow that carries no packet either way for this long is ended, and the client is told why.</summary>
    public TimeSpan UdpIdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
}
