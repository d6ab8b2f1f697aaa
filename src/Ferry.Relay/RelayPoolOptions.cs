namespace Ferry.Relay;

/// <summary>Settings of a <see cref="RelayPool"/>.</summary>
public sealed class RelayPoolOptions
{
    /// <summary>The relays to hold links to, most preferred first (for example nearest first).</summary>
    public required IReadOnlyList<RelayEndpoint> Relays { get; init; }

    /// <summary>Settings for every link (certificates, keepalive, timeouts).</summary>
    public required RelayLinkOptions Link { get; init; }

    /// <summary>First delay before reconnecting a lost relay; doubles on each failure up to <see cref="MaxReconnectDelay"/>.</summary>
    public TimeSpan ReconnectDelay { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Longest delay between reconnection attempts.</summary>
    public TimeSpan MaxReconnectDelay { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Received packets waiting for the application before new ones are dropped.</summary>
    public int InboundQueueCapacity { get; init; } = 8192;
}
