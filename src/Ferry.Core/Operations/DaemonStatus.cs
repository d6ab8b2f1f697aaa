namespace Ferry.Core.Operations;

/// <summary>What a running connector or relay answers on its control socket ('ferry status').</summary>
/// <param name="Kind">"connector" or "relay".</param>
/// <param name="Identity">"connector/cn_…" once the controller accepted a session; the id from the tokens file before that.</param>
/// <param name="Controller">The controller URL in use now.</param>
/// <param name="ConnectedSince">Since when the current controller session is up; null while there is none.</param>
/// <param name="LastError">Why the last session ended or could not start.</param>
/// <param name="RelayLinks">Connector: the relays it holds a link to. Relay: empty.</param>
/// <param name="Flows">Connector: flows open now. Relay: links up now.</param>
/// <param name="Listeners">Relay: relay-link and STUN endpoints. Connector: its data-plane UDP socket.</param>
/// <param name="Counters">Relay: its traffic and refusal counters since start.</param>
public sealed record DaemonStatus(
    string Kind,
    string? Identity,
    string? Name,
    string Controller,
    bool Connected,
    DateTimeOffset? ConnectedSince,
    string? LastError,
    DateTimeOffset? LastErrorAt,
    string[] RelayLinks,
    int Flows,
    string[] Listeners,
    IReadOnlyDictionary<string, long>? Counters);
