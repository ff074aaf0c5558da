<?php

// What vendor/autoload.php is in a Composer-installed application: the framework as Debian
// packages it (php-laravel-framework, whose autoloader loads its dependencies too), then this
// application's own classes, App\ from app/ (PSR-4).

require_once 'Illuminate/autoload.php';

spl_autoload_register(function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $file = __DIR__.'/../app/'.str_replace('\\', '/', substr($class, 4)).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
