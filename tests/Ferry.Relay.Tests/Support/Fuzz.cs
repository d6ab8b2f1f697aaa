using System.Globalization;

namespace Ferry.Relay.Tests.Support;

/// <summary>Seeds for fuzz tests: a fixed default so runs are reproducible, or another through FERRY_FUZZ_SEED to explore.</summary>
internal static class Fuzz
{
    public const int DefaultSeed = 20_261_123;

    public static int Seed() =>
        int.TryParse(Environment.GetEnvironmentVariable("FERRY_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var chosen)
            ? chosen
            : DefaultSeed;
}
